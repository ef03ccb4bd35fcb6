from circuit_proto.v1 import features_pb2 as _features_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WatchedFeatureReport(_message.Message):
    __slots__ = ("name", "layer", "index", "label", "threshold", "action", "max_activation", "completion_positions", "prompt_positions", "fired", "steered_from")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    MAX_ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    FIRED_FIELD_NUMBER: _ClassVar[int]
    STEERED_FROM_FIELD_NUMBER: _ClassVar[int]
    name: str
    layer: int
    index: int
    label: str
    threshold: float
    action: str
    max_activation: float
    completion_positions: _containers.RepeatedScalarFieldContainer[int]
    prompt_positions: _containers.RepeatedScalarFieldContainer[int]
    fired: bool
    steered_from: int
    def __init__(self, name: _Optional[str] = ..., layer: _Optional[int] = ..., index: _Optional[int] = ..., label: _Optional[str] = ..., threshold: _Optional[float] = ..., action: _Optional[str] = ..., max_activation: _Optional[float] = ..., completion_positions: _Optional[_Iterable[int]] = ..., prompt_positions: _Optional[_Iterable[int]] = ..., fired: _Optional[bool] = ..., steered_from: _Optional[int] = ...) -> None: ...

class MonitorReport(_message.Message):
    __slots__ = ("features", "flagged", "stopped_by")
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_FIELD_NUMBER: _ClassVar[int]
    STOPPED_BY_FIELD_NUMBER: _ClassVar[int]
    features: _containers.RepeatedCompositeFieldContainer[WatchedFeatureReport]
    flagged: bool
    stopped_by: str
    def __init__(self, features: _Optional[_Iterable[_Union[WatchedFeatureReport, _Mapping]]] = ..., flagged: _Optional[bool] = ..., stopped_by: _Optional[str] = ...) -> None: ...

class WatchRule(_message.Message):
    __slots__ = ("name", "layer", "index", "threshold", "action", "steer", "steer_preset")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    STEER_FIELD_NUMBER: _ClassVar[int]
    STEER_PRESET_FIELD_NUMBER: _ClassVar[int]
    name: str
    layer: int
    index: int
    threshold: float
    action: str
    steer: _containers.RepeatedCompositeFieldContainer[_features_pb2.Intervention]
    steer_preset: str
    def __init__(self, name: _Optional[str] = ..., layer: _Optional[int] = ..., index: _Optional[int] = ..., threshold: _Optional[float] = ..., action: _Optional[str] = ..., steer: _Optional[_Iterable[_Union[_features_pb2.Intervention, _Mapping]]] = ..., steer_preset: _Optional[str] = ...) -> None: ...

class WatchedValues(_message.Message):
    __slots__ = ("position", "values")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    position: int
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, position: _Optional[int] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...
