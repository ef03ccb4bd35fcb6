"""Input limits of `circuit-serve serve`: what one request may ask for, and how much the server
takes on at once.

Every field of every request that can cost memory or time is bounded before the work starts.
The bounds that belong to one engine live in its own config (`EngineConfig.max_new_tokens_limit`,
`AttributionConfig.max_prompt_tokens`, `FeaturesConfig.max_top_k`, ...); the ones here cut across
services or guard the server itself. A request over a limit gets INVALID_ARGUMENT naming the field
and the limit; a server over its concurrency limits answers RESOURCE_EXHAUSTED.

The only reader of these flags.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

_KIB = 1 << 10
_MIB = 1 << 20

DEFAULT_MAX_N_LOGITS = 10  # tracing.AttributionSettings.max_n_logits: a request that leaves it unset must pass


@dataclass(frozen=True)
class InputLimits:
    max_request_bytes: int = 4 * _MIB  # one serialized request message (gRPC's own default)
    max_prompt_bytes: int = 256 * _KIB  # UTF-8 bytes of a prompt or Tokenize text, checked before tokenizing
    max_stop_strings: int = 16  # stop strings of one generation request
    max_stop_chars: int = 256  # characters of one stop string
    max_targets: int = 64  # logit targets of one graph: explicit targets, and max_n_logits
    max_positions: int = 1024  # positions listed by one steering intervention
    max_request_id_bytes: int = 128  # an audited completion's request_id
    max_concurrent_rpcs: int = 256  # RPCs handled at once; more get RESOURCE_EXHAUSTED
    executor_threads: int = 8  # threads of the default executor (tokenizing, activations)
    max_executor_queue: int = 64  # blocking jobs waiting for one of those threads; more get RESOURCE_EXHAUSTED

    def validate(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 1:
                raise ValueError(f"--{f.name.replace('_', '-')} must be >= 1, got {getattr(self, f.name)}")
        if self.max_targets < DEFAULT_MAX_N_LOGITS:
            raise ValueError(f"--max-attribution-targets must be >= {DEFAULT_MAX_N_LOGITS} (the default max_n_logits), "
                             f"got {self.max_targets}")

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        d = InputLimits
        g = parser.add_argument_group("input limits (each rejection names the field and the limit)")
        g.add_argument("--max-request-bytes", type=int, default=d.max_request_bytes,
                       help="largest serialized request message (default %(default)s)")
        g.add_argument("--max-prompt-bytes", type=int, default=d.max_prompt_bytes,
                       help="largest prompt / Tokenize text in UTF-8 bytes, checked before tokenizing "
                            "(default %(default)s)")
        g.add_argument("--max-stop-strings", type=int, default=d.max_stop_strings)
        g.add_argument("--max-stop-chars", type=int, default=d.max_stop_chars, help="longest stop string")
        g.add_argument("--max-attribution-targets", type=int, default=d.max_targets, dest="max_targets")
        g.add_argument("--max-intervention-positions", type=int, default=d.max_positions, dest="max_positions",
                       help="prompt positions one steering intervention may list")
        g.add_argument("--max-request-id-bytes", type=int, default=d.max_request_id_bytes)
        g.add_argument("--max-concurrent-rpcs", type=int, default=d.max_concurrent_rpcs,
                       help="RPCs handled at once; more get RESOURCE_EXHAUSTED (default %(default)s)")
        g.add_argument("--executor-threads", type=int, default=d.executor_threads,
                       help="threads for blocking work such as tokenizing (default %(default)s)")
        g.add_argument("--max-executor-queue", type=int, default=d.max_executor_queue,
                       help="blocking jobs waiting for a thread; more get RESOURCE_EXHAUSTED (default %(default)s)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> InputLimits:
        limits = cls(**{f.name: getattr(args, f.name) for f in fields(cls)})
        limits.validate()
        return limits
