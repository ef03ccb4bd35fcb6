"""Input limits of `circuit-serve serve`: what one request may ask for, and how much the server
takes on at once.

Every field of every request that can cost memory or time is bounded before the work starts.
The bounds that belong to one engine live in its own config (`EngineConfig.max_new_tokens_limit`,
`AttributionConfig.max_prompt_tokens`, `FeaturesConfig.max_top_k`, ...); the ones here cut across
services or guard the server itself. A request over a limit gets INVALID_ARGUMENT naming the field
and the limit; a server over its concurrency limits answers RESOURCE_EXHAUSTED.

Each field is declared once (config/option.py): its flag, default, bound and `circuit.v1.Limits` name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from circuit_serve.config.option import Options, option

_KIB = 1 << 10
_MIB = 1 << 20

DEFAULT_MAX_N_LOGITS = 10  # tracing.AttributionSettings.max_n_logits: a request that leaves it unset must pass


@dataclass(frozen=True)
class InputLimits(Options):
    group: ClassVar[str] = "input limits (each rejection names the field and the limit)"

    max_request_bytes: int = option(
        4 * _MIB,
        flag="--max-request-bytes",
        ge=1,
        limits=("max_request_bytes",),
        help="largest serialized request message (gRPC's own default)",
    )
    max_prompt_bytes: int = option(
        256 * _KIB,
        flag="--max-prompt-bytes",
        ge=1,
        limits=("max_prompt_bytes",),
        help="largest prompt / Tokenize text in UTF-8 bytes, checked before tokenizing",
    )
    max_stop_strings: int = option(
        16,
        flag="--max-stop-strings",
        ge=1,
        limits=("generation_max_stop_strings",),
        help="stop strings of one generation request",
    )
    max_stop_chars: int = option(
        256, flag="--max-stop-chars", ge=1, limits=("generation_max_stop_chars",), help="longest stop string"
    )
    max_targets: int = option(
        64,
        flag="--max-attribution-targets",
        ge=DEFAULT_MAX_N_LOGITS,
        why="the default max_n_logits",
        limits=("attribution_max_targets",),
        help="logit targets of one graph: explicit targets, and max_n_logits",
    )
    max_positions: int = option(
        1024,
        flag="--max-intervention-positions",
        ge=1,
        limits=("steer_max_positions",),
        help="prompt positions one steering intervention (Steer or Generate) may list",
    )
    max_request_id_bytes: int = option(
        128,
        flag="--max-request-id-bytes",
        ge=1,
        limits=("max_request_id_bytes",),
        help="an audited completion's request_id",
    )
    max_concurrent_rpcs: int = option(
        256,
        flag="--max-concurrent-rpcs",
        ge=1,
        limits=("max_concurrent_rpcs",),
        help="RPCs handled at once; more get RESOURCE_EXHAUSTED",
    )
    executor_threads: int = option(
        8,
        flag="--executor-threads",
        ge=1,
        limits=("executor_threads",),
        help="threads for blocking work such as tokenizing",
    )
    max_executor_queue: int = option(
        64,
        flag="--max-executor-queue",
        ge=1,
        limits=("max_executor_queue",),
        help="blocking jobs waiting for a thread; more get RESOURCE_EXHAUSTED",
    )
