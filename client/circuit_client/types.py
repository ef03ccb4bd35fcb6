"""Results as plain Python objects (no protobuf)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from circuit_client.interventions import Intervention
from circuit_client.monitor import MonitorReport, WatchedValues


class FinishReason(enum.StrEnum):
    UNSPECIFIED = "unspecified"
    STOP = "stop"  # end-of-sequence token or a stop string
    LENGTH = "length"  # max_new_tokens or the model's maximum length
    ABORT = "abort"  # aborted by the server
    FEATURE_RULE = "feature_rule"  # a watchlist stop rule ended it (monitored requests)


@dataclass(frozen=True)
class Sampling:
    """Generation parameters; None leaves the server's default (16 tokens, temperature 1, top_p 1)."""

    max_new_tokens: int | None = None
    temperature: float | None = None  # 0 = greedy
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    top_logprobs: int | None = None  # return per-token logprobs with this many alternatives


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class TopLogprob:
    token_id: int
    token: str
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class Generation:
    request_id: str
    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason
    usage: Usage
    stop_sequence: str | None = None
    logprobs: tuple[TokenLogprob, ...] = ()
    monitor: MonitorReport | None = None  # watched features, when the request was monitored


@dataclass(frozen=True)
class StreamChunk:
    """New tokens; the last chunk of a stream has no tokens and carries finish reason and usage."""

    request_id: str
    text: str = ""
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()
    finish_reason: FinishReason | None = None
    stop_sequence: str | None = None
    usage: Usage | None = None
    monitor: MonitorReport | None = None  # on the last chunk of a monitored stream
    activations: tuple[WatchedValues, ...] = ()  # Monitoring(values=True): positions computed since the last chunk

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True)
class Tokenization:
    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]


@dataclass(frozen=True)
class TranscoderSet:
    name: str  # directory or Hugging Face repo id
    path: str
    kind: str  # "transcoder_set" (per-layer) or "cross_layer_transcoder"
    num_layers: int
    features_per_layer: int
    revision: str = ""  # hub commit of a set loaded by repo id
    feature_input_hook: str = ""
    feature_output_hook: str = ""
    activation: str = ""  # relu | jumprelu | topk
    top_k: int = 0
    dtype: str = ""
    lazy_decoder: bool = False
    skip_connection: bool = False
    d_model: int = 0


@dataclass(frozen=True)
class ChatMessage:
    """One chat turn; the server renders a list of them with the model's chat template."""

    role: str
    content: str


@dataclass(frozen=True)
class ModelInfo:
    model_name: str
    model_path: str
    architecture: str
    max_model_len: int
    vocab_size: int
    dtype: str
    server_version: str
    max_new_tokens_limit: int
    max_top_logprobs: int
    transcoders: TranscoderSet | None = None
    max_request_watch: int = 0  # most watch rules one request may send (0: no monitoring)
    limits: dict[str, float] = field(default_factory=dict)  # every input limit (circuit.v1.Limits field names)
    steering_presets: dict[str, tuple[Intervention, ...]] = field(default_factory=dict)  # --steering, by name
    steering_default: str | None = None  # the preset applied to every generation request (--steering-default)
