"""Plain data of generation: what the generation engine takes and returns (no protobuf, no vLLM types)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from circuit_serve.domain.chat import ChatMessage
from circuit_serve.domain.features import Intervention, MonitorReport, WatchedValues, WatchRequest


class FinishReason(enum.StrEnum):
    STOP = "stop"  # end-of-sequence token or a stop string
    LENGTH = "length"  # max_new_tokens or the model's maximum length
    ABORT = "abort"  # aborted (caller went away, or shutdown)
    FEATURE_RULE = "feature_rule"  # a watchlist `stop` rule (circuit_serve.features) ended it


@dataclass(frozen=True)
class SamplingOptions:
    max_new_tokens: int = 16
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = disabled
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    top_logprobs: int | None = None  # None: no logprobs; n: chosen token + n alternatives


@dataclass(frozen=True)
class GenerationRequest:
    """Exactly one of `prompt`, `prompt_token_ids` and `messages` is set."""

    prompt: str | None = None
    prompt_token_ids: tuple[int, ...] | None = None
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    watch: WatchRequest | None = None  # monitored inside the engine (see circuit_serve.monitoring)
    messages: tuple[ChatMessage, ...] | None = None  # rendered with the model's chat template
    interventions: tuple[Intervention, ...] = ()  # steered inside the engine (see circuit_serve.monitoring.steer)
    steering_preset: str = ""  # a preset of the server's (--steering), applied before `interventions`
    skip_default_steering: bool = False  # not the server's default preset (needs the steer scope)


@dataclass(frozen=True)
class TokenLogprobs:
    token_id: int
    logprob: float
    top: tuple[tuple[int, str, float], ...] = ()  # (token_id, token, logprob), most likely first
    token: str = ""  # the chosen token's text (as decoded by the engine)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class GenerationChunk:
    """One step of a stream: new tokens, and on the last chunk the finish reason and usage."""

    request_id: str
    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprobs, ...] = ()
    finish_reason: FinishReason | None = None  # set on the last chunk only
    stop_sequence: str | None = None
    usage: Usage | None = None  # set on the last chunk only
    activations: tuple[WatchedValues, ...] = ()  # monitored with values: positions computed since the last chunk
    monitor: MonitorReport | None = None  # monitored: on the last chunk

    def as_result(self) -> GenerationResult:
        """This chunk as a whole result: it must be the last chunk of a merged stream."""
        if self.finish_reason is None or self.usage is None:
            raise ValueError(f"chunk of {self.request_id} is not a finished generation")
        return GenerationResult(
            request_id=self.request_id,
            text=self.text,
            token_ids=self.token_ids,
            finish_reason=self.finish_reason,
            usage=self.usage,
            stop_sequence=self.stop_sequence,
            logprobs=self.logprobs,
            monitor=self.monitor,
        )


@dataclass(frozen=True)
class GenerationResult:
    request_id: str
    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason
    usage: Usage
    stop_sequence: str | None = None
    logprobs: tuple[TokenLogprobs, ...] = ()
    monitor: MonitorReport | None = None  # watched features, when the request was monitored


@dataclass(frozen=True)
class CompletionRecord:
    """What was served under a request id; handed to finish listeners (auditing, monitoring)."""

    request_id: str
    prompt_token_ids: tuple[int, ...]
    token_ids: tuple[int, ...]
    text: str
    finish_reason: FinishReason
    sampling: SamplingOptions
    interventions: tuple[Intervention, ...] = ()  # steered in the engine (kept in the audit record; see app)


@dataclass(frozen=True)
class ModelDescription:
    name: str
    path: str
    architecture: str
    max_model_len: int
    vocab_size: int
    dtype: str
    max_new_tokens_limit: int
    max_top_logprobs: int
    max_request_watch: int = 0  # most watched features a request may add (0: no in-engine monitor)
