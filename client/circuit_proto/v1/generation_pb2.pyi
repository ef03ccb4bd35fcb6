from circuit_proto.v1 import chat_pb2 as _chat_pb2
from circuit_proto.v1 import features_pb2 as _features_pb2
from circuit_proto.v1 import monitor_pb2 as _monitor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_ABORT: _ClassVar[FinishReason]
    FINISH_REASON_FEATURE_RULE: _ClassVar[FinishReason]
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_ABORT: FinishReason
FINISH_REASON_FEATURE_RULE: FinishReason

class GenerateRequest(_message.Message):
    __slots__ = ("prompt", "prompt_token_ids", "sampling", "top_logprobs", "monitor", "watch", "monitor_values", "interventions", "steering_preset", "skip_default_steering", "messages")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    TOP_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    MONITOR_FIELD_NUMBER: _ClassVar[int]
    WATCH_FIELD_NUMBER: _ClassVar[int]
    MONITOR_VALUES_FIELD_NUMBER: _ClassVar[int]
    INTERVENTIONS_FIELD_NUMBER: _ClassVar[int]
    STEERING_PRESET_FIELD_NUMBER: _ClassVar[int]
    SKIP_DEFAULT_STEERING_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    sampling: SamplingParams
    top_logprobs: int
    monitor: bool
    watch: _containers.RepeatedCompositeFieldContainer[_monitor_pb2.WatchRule]
    monitor_values: bool
    interventions: _containers.RepeatedCompositeFieldContainer[_features_pb2.Intervention]
    steering_preset: str
    skip_default_steering: bool
    messages: _containers.RepeatedCompositeFieldContainer[_chat_pb2.ChatMessage]
    def __init__(self, prompt: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., top_logprobs: _Optional[int] = ..., monitor: _Optional[bool] = ..., watch: _Optional[_Iterable[_Union[_monitor_pb2.WatchRule, _Mapping]]] = ..., monitor_values: _Optional[bool] = ..., interventions: _Optional[_Iterable[_Union[_features_pb2.Intervention, _Mapping]]] = ..., steering_preset: _Optional[str] = ..., skip_default_steering: _Optional[bool] = ..., messages: _Optional[_Iterable[_Union[_chat_pb2.ChatMessage, _Mapping]]] = ...) -> None: ...

class SamplingParams(_message.Message):
    __slots__ = ("max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop", "ignore_eos")
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    IGNORE_EOS_FIELD_NUMBER: _ClassVar[int]
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    ignore_eos: bool
    def __init__(self, max_new_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., ignore_eos: _Optional[bool] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ...) -> None: ...

class TopLogprob(_message.Message):
    __slots__ = ("token_id", "token", "logprob")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    token_id: int
    token: str
    logprob: float
    def __init__(self, token_id: _Optional[int] = ..., token: _Optional[str] = ..., logprob: _Optional[float] = ...) -> None: ...

class TokenLogprobs(_message.Message):
    __slots__ = ("token_id", "logprob", "top")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    token_id: int
    logprob: float
    top: _containers.RepeatedCompositeFieldContainer[TopLogprob]
    def __init__(self, token_id: _Optional[int] = ..., logprob: _Optional[float] = ..., top: _Optional[_Iterable[_Union[TopLogprob, _Mapping]]] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("request_id", "text", "token_ids", "finish_reason", "stop_sequence", "usage", "logprobs", "monitor")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    STOP_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    MONITOR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    finish_reason: FinishReason
    stop_sequence: str
    usage: Usage
    logprobs: _containers.RepeatedCompositeFieldContainer[TokenLogprobs]
    monitor: _monitor_pb2.MonitorReport
    def __init__(self, request_id: _Optional[str] = ..., text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., stop_sequence: _Optional[str] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., logprobs: _Optional[_Iterable[_Union[TokenLogprobs, _Mapping]]] = ..., monitor: _Optional[_Union[_monitor_pb2.MonitorReport, _Mapping]] = ...) -> None: ...

class TokenDelta(_message.Message):
    __slots__ = ("text", "token_ids", "logprobs", "activations")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    ACTIVATIONS_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    logprobs: _containers.RepeatedCompositeFieldContainer[TokenLogprobs]
    activations: _containers.RepeatedCompositeFieldContainer[_monitor_pb2.WatchedValues]
    def __init__(self, text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., logprobs: _Optional[_Iterable[_Union[TokenLogprobs, _Mapping]]] = ..., activations: _Optional[_Iterable[_Union[_monitor_pb2.WatchedValues, _Mapping]]] = ...) -> None: ...

class GenerationEnd(_message.Message):
    __slots__ = ("finish_reason", "stop_sequence", "usage", "monitor", "activations")
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    STOP_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    MONITOR_FIELD_NUMBER: _ClassVar[int]
    ACTIVATIONS_FIELD_NUMBER: _ClassVar[int]
    finish_reason: FinishReason
    stop_sequence: str
    usage: Usage
    monitor: _monitor_pb2.MonitorReport
    activations: _containers.RepeatedCompositeFieldContainer[_monitor_pb2.WatchedValues]
    def __init__(self, finish_reason: _Optional[_Union[FinishReason, str]] = ..., stop_sequence: _Optional[str] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., monitor: _Optional[_Union[_monitor_pb2.MonitorReport, _Mapping]] = ..., activations: _Optional[_Iterable[_Union[_monitor_pb2.WatchedValues, _Mapping]]] = ...) -> None: ...

class GenerateStreamResponse(_message.Message):
    __slots__ = ("request_id", "delta", "end")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    delta: TokenDelta
    end: GenerationEnd
    def __init__(self, request_id: _Optional[str] = ..., delta: _Optional[_Union[TokenDelta, _Mapping]] = ..., end: _Optional[_Union[GenerationEnd, _Mapping]] = ...) -> None: ...

class TokenizeRequest(_message.Message):
    __slots__ = ("text", "add_special_tokens", "messages")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ADD_SPECIAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    text: str
    add_special_tokens: bool
    messages: _containers.RepeatedCompositeFieldContainer[_chat_pb2.ChatMessage]
    def __init__(self, text: _Optional[str] = ..., add_special_tokens: _Optional[bool] = ..., messages: _Optional[_Iterable[_Union[_chat_pb2.ChatMessage, _Mapping]]] = ...) -> None: ...

class TokenizeResponse(_message.Message):
    __slots__ = ("token_ids", "tokens")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    tokens: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., tokens: _Optional[_Iterable[str]] = ...) -> None: ...

class ModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TranscoderSetInfo(_message.Message):
    __slots__ = ("name", "path", "kind", "num_layers", "features_per_layer", "revision", "feature_input_hook", "feature_output_hook", "activation", "top_k", "dtype", "lazy_decoder", "skip_connection", "d_model")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_PER_LAYER_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    FEATURE_INPUT_HOOK_FIELD_NUMBER: _ClassVar[int]
    FEATURE_OUTPUT_HOOK_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    LAZY_DECODER_FIELD_NUMBER: _ClassVar[int]
    SKIP_CONNECTION_FIELD_NUMBER: _ClassVar[int]
    D_MODEL_FIELD_NUMBER: _ClassVar[int]
    name: str
    path: str
    kind: str
    num_layers: int
    features_per_layer: int
    revision: str
    feature_input_hook: str
    feature_output_hook: str
    activation: str
    top_k: int
    dtype: str
    lazy_decoder: bool
    skip_connection: bool
    d_model: int
    def __init__(self, name: _Optional[str] = ..., path: _Optional[str] = ..., kind: _Optional[str] = ..., num_layers: _Optional[int] = ..., features_per_layer: _Optional[int] = ..., revision: _Optional[str] = ..., feature_input_hook: _Optional[str] = ..., feature_output_hook: _Optional[str] = ..., activation: _Optional[str] = ..., top_k: _Optional[int] = ..., dtype: _Optional[str] = ..., lazy_decoder: _Optional[bool] = ..., skip_connection: _Optional[bool] = ..., d_model: _Optional[int] = ...) -> None: ...

class ModelInfoResponse(_message.Message):
    __slots__ = ("model_name", "model_path", "architecture", "max_model_len", "vocab_size", "dtype", "transcoders", "server_version", "max_new_tokens_limit", "max_top_logprobs", "max_request_watch", "limits", "steering_presets", "steering_default")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_PATH_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    MAX_MODEL_LEN_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    TRANSCODERS_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_LIMIT_FIELD_NUMBER: _ClassVar[int]
    MAX_TOP_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUEST_WATCH_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    STEERING_PRESETS_FIELD_NUMBER: _ClassVar[int]
    STEERING_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_path: str
    architecture: str
    max_model_len: int
    vocab_size: int
    dtype: str
    transcoders: TranscoderSetInfo
    server_version: str
    max_new_tokens_limit: int
    max_top_logprobs: int
    max_request_watch: int
    limits: Limits
    steering_presets: _containers.RepeatedCompositeFieldContainer[_features_pb2.SteeringPreset]
    steering_default: str
    def __init__(self, model_name: _Optional[str] = ..., model_path: _Optional[str] = ..., architecture: _Optional[str] = ..., max_model_len: _Optional[int] = ..., vocab_size: _Optional[int] = ..., dtype: _Optional[str] = ..., transcoders: _Optional[_Union[TranscoderSetInfo, _Mapping]] = ..., server_version: _Optional[str] = ..., max_new_tokens_limit: _Optional[int] = ..., max_top_logprobs: _Optional[int] = ..., max_request_watch: _Optional[int] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., steering_presets: _Optional[_Iterable[_Union[_features_pb2.SteeringPreset, _Mapping]]] = ..., steering_default: _Optional[str] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_request_bytes", "max_prompt_bytes", "max_concurrent_rpcs", "executor_threads", "max_executor_queue", "generation_max_prompt_tokens", "generation_max_new_tokens", "generation_max_top_logprobs", "generation_max_temperature", "generation_max_top_k", "generation_max_stop_strings", "generation_max_stop_chars", "attribution_max_prompt_tokens", "attribution_max_feature_nodes", "attribution_max_batch_size", "attribution_max_targets", "attribution_memory_budget_bytes", "attribution_max_queued", "max_request_id_bytes", "features_max_prompt_tokens", "features_max_top_k", "features_max_listed", "steer_max_tokens", "steer_max_new_tokens", "steer_max_interventions", "steer_max_positions", "steer_max_temperature")
    MAX_REQUEST_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_PROMPT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_RPCS_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_THREADS_FIELD_NUMBER: _ClassVar[int]
    MAX_EXECUTOR_QUEUE_FIELD_NUMBER: _ClassVar[int]
    GENERATION_MAX_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_MAX_TOP_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_MAX_TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    GENERATION_MAX_TOP_K_FIELD_NUMBER: _ClassVar[int]
    GENERATION_MAX_STOP_STRINGS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_MAX_STOP_CHARS_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTION_MAX_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTION_MAX_FEATURE_NODES_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTION_MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTION_MAX_TARGETS_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTION_MEMORY_BUDGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTION_MAX_QUEUED_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUEST_ID_BYTES_FIELD_NUMBER: _ClassVar[int]
    FEATURES_MAX_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_MAX_TOP_K_FIELD_NUMBER: _ClassVar[int]
    FEATURES_MAX_LISTED_FIELD_NUMBER: _ClassVar[int]
    STEER_MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STEER_MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STEER_MAX_INTERVENTIONS_FIELD_NUMBER: _ClassVar[int]
    STEER_MAX_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    STEER_MAX_TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    max_request_bytes: int
    max_prompt_bytes: int
    max_concurrent_rpcs: int
    executor_threads: int
    max_executor_queue: int
    generation_max_prompt_tokens: int
    generation_max_new_tokens: int
    generation_max_top_logprobs: int
    generation_max_temperature: float
    generation_max_top_k: int
    generation_max_stop_strings: int
    generation_max_stop_chars: int
    attribution_max_prompt_tokens: int
    attribution_max_feature_nodes: int
    attribution_max_batch_size: int
    attribution_max_targets: int
    attribution_memory_budget_bytes: int
    attribution_max_queued: int
    max_request_id_bytes: int
    features_max_prompt_tokens: int
    features_max_top_k: int
    features_max_listed: int
    steer_max_tokens: int
    steer_max_new_tokens: int
    steer_max_interventions: int
    steer_max_positions: int
    steer_max_temperature: float
    def __init__(self, max_request_bytes: _Optional[int] = ..., max_prompt_bytes: _Optional[int] = ..., max_concurrent_rpcs: _Optional[int] = ..., executor_threads: _Optional[int] = ..., max_executor_queue: _Optional[int] = ..., generation_max_prompt_tokens: _Optional[int] = ..., generation_max_new_tokens: _Optional[int] = ..., generation_max_top_logprobs: _Optional[int] = ..., generation_max_temperature: _Optional[float] = ..., generation_max_top_k: _Optional[int] = ..., generation_max_stop_strings: _Optional[int] = ..., generation_max_stop_chars: _Optional[int] = ..., attribution_max_prompt_tokens: _Optional[int] = ..., attribution_max_feature_nodes: _Optional[int] = ..., attribution_max_batch_size: _Optional[int] = ..., attribution_max_targets: _Optional[int] = ..., attribution_memory_budget_bytes: _Optional[int] = ..., attribution_max_queued: _Optional[int] = ..., max_request_id_bytes: _Optional[int] = ..., features_max_prompt_tokens: _Optional[int] = ..., features_max_top_k: _Optional[int] = ..., features_max_listed: _Optional[int] = ..., steer_max_tokens: _Optional[int] = ..., steer_max_new_tokens: _Optional[int] = ..., steer_max_interventions: _Optional[int] = ..., steer_max_positions: _Optional[int] = ..., steer_max_temperature: _Optional[float] = ...) -> None: ...
