from circuit_proto.v1 import chat_pb2 as _chat_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InterventionOp(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INTERVENTION_OP_UNSPECIFIED: _ClassVar[InterventionOp]
    INTERVENTION_OP_SET: _ClassVar[InterventionOp]
    INTERVENTION_OP_SCALE: _ClassVar[InterventionOp]
    INTERVENTION_OP_ADD: _ClassVar[InterventionOp]
INTERVENTION_OP_UNSPECIFIED: InterventionOp
INTERVENTION_OP_SET: InterventionOp
INTERVENTION_OP_SCALE: InterventionOp
INTERVENTION_OP_ADD: InterventionOp

class FeatureRef(_message.Message):
    __slots__ = ("layer", "index")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    layer: int
    index: int
    def __init__(self, layer: _Optional[int] = ..., index: _Optional[int] = ...) -> None: ...

class FeatureActivationsRequest(_message.Message):
    __slots__ = ("prompt", "prompt_token_ids", "features", "top_k", "messages")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    features: _containers.RepeatedCompositeFieldContainer[FeatureRef]
    top_k: int
    messages: _containers.RepeatedCompositeFieldContainer[_chat_pb2.ChatMessage]
    def __init__(self, prompt: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., features: _Optional[_Iterable[_Union[FeatureRef, _Mapping]]] = ..., top_k: _Optional[int] = ..., messages: _Optional[_Iterable[_Union[_chat_pb2.ChatMessage, _Mapping]]] = ...) -> None: ...

class FeatureValue(_message.Message):
    __slots__ = ("layer", "index", "activation", "label")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    layer: int
    index: int
    activation: float
    label: str
    def __init__(self, layer: _Optional[int] = ..., index: _Optional[int] = ..., activation: _Optional[float] = ..., label: _Optional[str] = ...) -> None: ...

class PositionActivations(_message.Message):
    __slots__ = ("position", "token_id", "token", "features")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    position: int
    token_id: int
    token: str
    features: _containers.RepeatedCompositeFieldContainer[FeatureValue]
    def __init__(self, position: _Optional[int] = ..., token_id: _Optional[int] = ..., token: _Optional[str] = ..., features: _Optional[_Iterable[_Union[FeatureValue, _Mapping]]] = ...) -> None: ...

class FeatureActivationsResponse(_message.Message):
    __slots__ = ("positions",)
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    positions: _containers.RepeatedCompositeFieldContainer[PositionActivations]
    def __init__(self, positions: _Optional[_Iterable[_Union[PositionActivations, _Mapping]]] = ...) -> None: ...

class Intervention(_message.Message):
    __slots__ = ("feature", "op", "value", "positions", "generated_tokens", "all_prompt_positions")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ALL_PROMPT_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    feature: FeatureRef
    op: InterventionOp
    value: float
    positions: _containers.RepeatedScalarFieldContainer[int]
    generated_tokens: bool
    all_prompt_positions: bool
    def __init__(self, feature: _Optional[_Union[FeatureRef, _Mapping]] = ..., op: _Optional[_Union[InterventionOp, str]] = ..., value: _Optional[float] = ..., positions: _Optional[_Iterable[int]] = ..., generated_tokens: _Optional[bool] = ..., all_prompt_positions: _Optional[bool] = ...) -> None: ...

class SteeringPreset(_message.Message):
    __slots__ = ("name", "interventions")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INTERVENTIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    interventions: _containers.RepeatedCompositeFieldContainer[Intervention]
    def __init__(self, name: _Optional[str] = ..., interventions: _Optional[_Iterable[_Union[Intervention, _Mapping]]] = ...) -> None: ...

class SteerRequest(_message.Message):
    __slots__ = ("prompt", "prompt_token_ids", "interventions", "max_new_tokens", "temperature", "top_p", "seed", "include_default", "messages")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    INTERVENTIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    interventions: _containers.RepeatedCompositeFieldContainer[Intervention]
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    include_default: bool
    messages: _containers.RepeatedCompositeFieldContainer[_chat_pb2.ChatMessage]
    def __init__(self, prompt: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., interventions: _Optional[_Iterable[_Union[Intervention, _Mapping]]] = ..., max_new_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ..., include_default: _Optional[bool] = ..., messages: _Optional[_Iterable[_Union[_chat_pb2.ChatMessage, _Mapping]]] = ...) -> None: ...

class Completion(_message.Message):
    __slots__ = ("text", "token_ids")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class SteerResponse(_message.Message):
    __slots__ = ("prompt_token_ids", "steered", "default")
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    STEERED_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_FIELD_NUMBER: _ClassVar[int]
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    steered: Completion
    default: Completion
    def __init__(self, prompt_token_ids: _Optional[_Iterable[int]] = ..., steered: _Optional[_Union[Completion, _Mapping]] = ..., default: _Optional[_Union[Completion, _Mapping]] = ...) -> None: ...
