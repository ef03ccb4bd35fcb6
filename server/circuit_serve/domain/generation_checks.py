"""Generation request checks: every rejection names the field and the allowed range."""

from __future__ import annotations

import math
from dataclasses import dataclass

from circuit_serve.domain.chat import check_messages
from circuit_serve.domain.errors import InvalidRequest
from circuit_serve.domain.generation import GenerationRequest
from circuit_serve.domain.input_checks import check_count, check_text_bytes

# vLLM 0.32's SamplingParams accepts temperature in [0, 2] (sampling_params.py `_verify_args`);
# steering uses the same bound so both answer alike.
MAX_TEMPERATURE = 2.0


@dataclass(frozen=True)
class Limits:
    vocab_size: int
    max_model_len: int
    max_new_tokens_limit: int
    max_top_logprobs: int
    max_prompt_bytes: int  # these three are flags: config/limits.py declares them and their defaults
    max_stop_strings: int
    max_stop_chars: int
    max_temperature: float = MAX_TEMPERATURE


def check_request(request: GenerationRequest, limits: Limits) -> None:
    """Checks that need no tokenizer (sizes first, before anything is scanned); raises InvalidRequest."""
    check_text_bytes(request.prompt, limits.max_prompt_bytes, field="prompt")
    if request.prompt_token_ids:
        check_prompt_length(len(request.prompt_token_ids), limits, field="prompt_token_ids")
    has_text = bool(request.prompt)
    has_ids = bool(request.prompt_token_ids)
    if request.messages:
        if has_text or has_ids:
            raise InvalidRequest("set one of prompt, prompt_token_ids and messages, not several", field="messages")
        check_messages(request.messages)
    elif has_text and has_ids:
        raise InvalidRequest("set either prompt or prompt_token_ids, not both", field="prompt")
    elif not has_text and not has_ids:
        raise InvalidRequest(
            "is empty; set prompt to non-empty text or prompt_token_ids to 1 or more token ids",
            field="prompt",
        )
    if has_ids:
        bad = [t for t in request.prompt_token_ids or () if not 0 <= t < limits.vocab_size]
        if bad:
            raise InvalidRequest(
                f"unknown token id {bad[0]}; ids must be in [0, {limits.vocab_size - 1}]",
                field="prompt_token_ids",
            )

    s = request.sampling
    if not 1 <= s.max_new_tokens <= limits.max_new_tokens_limit:
        raise InvalidRequest(
            f"is {s.max_new_tokens}; allowed range is [1, {limits.max_new_tokens_limit}]",
            field="sampling.max_new_tokens",
        )
    if not (math.isfinite(s.temperature) and 0 <= s.temperature <= limits.max_temperature):
        raise InvalidRequest(
            f"is {s.temperature}; must be >= 0 and <= {limits.max_temperature:g} (0 = greedy)",
            field="sampling.temperature",
        )
    if not (math.isfinite(s.top_p) and 0 < s.top_p <= 1):
        raise InvalidRequest(f"is {s.top_p}; allowed range is (0, 1]", field="sampling.top_p")
    if not 0 <= s.top_k <= limits.vocab_size:
        raise InvalidRequest(
            f"is {s.top_k}; allowed range is [0, {limits.vocab_size}] (0 disables top-k)",
            field="sampling.top_k",
        )
    check_count(s.stop, limits.max_stop_strings, field="sampling.stop", what="stop strings")
    longest = max((len(stop) for stop in s.stop), default=0)
    if longest > limits.max_stop_chars:
        raise InvalidRequest(
            f"has a stop string of {longest} characters; the limit is {limits.max_stop_chars}", field="sampling.stop"
        )
    if any(not stop for stop in s.stop):
        raise InvalidRequest("contains an empty string; every stop sequence must be non-empty", field="sampling.stop")
    if s.top_logprobs is not None and not 0 <= s.top_logprobs <= limits.max_top_logprobs:
        raise InvalidRequest(
            f"is {s.top_logprobs}; allowed range is [0, {limits.max_top_logprobs}]", field="top_logprobs"
        )


def check_prompt_length(num_tokens: int, limits: Limits, *, field: str) -> None:
    """The prompt must leave room for at least one generated token."""
    longest = limits.max_model_len - 1
    if num_tokens > longest:
        raise InvalidRequest(
            f"is {num_tokens} tokens; allowed range is [1, {longest}] tokens "
            f"(max_model_len {limits.max_model_len} minus at least one generated token)",
            field=field,
        )
