from circuit_proto.v1 import chat_pb2 as _chat_pb2
from circuit_proto.v1 import graph_pb2 as _graph_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobClass(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_CLASS_UNSPECIFIED: _ClassVar[JobClass]
    JOB_CLASS_INTERACTIVE: _ClassVar[JobClass]
    JOB_CLASS_BACKGROUND: _ClassVar[JobClass]
    JOB_CLASS_BACKFILL: _ClassVar[JobClass]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_DONE: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]

class GraphOutput(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GRAPH_OUTPUT_UNSPECIFIED: _ClassVar[GraphOutput]
    GRAPH_OUTPUT_PROTO: _ClassVar[GraphOutput]
    GRAPH_OUTPUT_JSON: _ClassVar[GraphOutput]
    GRAPH_OUTPUT_BOTH: _ClassVar[GraphOutput]
JOB_CLASS_UNSPECIFIED: JobClass
JOB_CLASS_INTERACTIVE: JobClass
JOB_CLASS_BACKGROUND: JobClass
JOB_CLASS_BACKFILL: JobClass
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_DONE: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState
GRAPH_OUTPUT_UNSPECIFIED: GraphOutput
GRAPH_OUTPUT_PROTO: GraphOutput
GRAPH_OUTPUT_JSON: GraphOutput
GRAPH_OUTPUT_BOTH: GraphOutput

class GetJobRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class JobStatus(_message.Message):
    __slots__ = ("key", "state", "position", "phase", "fraction", "replica", "reason", "job_class", "deliveries")
    KEY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    JOB_CLASS_FIELD_NUMBER: _ClassVar[int]
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    key: str
    state: JobState
    position: int
    phase: str
    fraction: float
    replica: str
    reason: str
    job_class: JobClass
    deliveries: int
    def __init__(self, key: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., position: _Optional[int] = ..., phase: _Optional[str] = ..., fraction: _Optional[float] = ..., replica: _Optional[str] = ..., reason: _Optional[str] = ..., job_class: _Optional[_Union[JobClass, str]] = ..., deliveries: _Optional[int] = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ("cancelled", "reason", "status")
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    cancelled: bool
    reason: str
    status: JobStatus
    def __init__(self, cancelled: _Optional[bool] = ..., reason: _Optional[str] = ..., status: _Optional[_Union[JobStatus, _Mapping]] = ...) -> None: ...

class ContrastTarget(_message.Message):
    __slots__ = ("token_id", "versus_token_id")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    VERSUS_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    token_id: int
    versus_token_id: int
    def __init__(self, token_id: _Optional[int] = ..., versus_token_id: _Optional[int] = ...) -> None: ...

class AttributionTarget(_message.Message):
    __slots__ = ("token_id", "contrast")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    CONTRAST_FIELD_NUMBER: _ClassVar[int]
    token_id: int
    contrast: ContrastTarget
    def __init__(self, token_id: _Optional[int] = ..., contrast: _Optional[_Union[ContrastTarget, _Mapping]] = ...) -> None: ...

class AttributionSettings(_message.Message):
    __slots__ = ("max_n_logits", "desired_logit_prob", "max_feature_nodes", "batch_size", "node_threshold", "edge_threshold", "targets", "head_loadings", "qk_edges")
    MAX_N_LOGITS_FIELD_NUMBER: _ClassVar[int]
    DESIRED_LOGIT_PROB_FIELD_NUMBER: _ClassVar[int]
    MAX_FEATURE_NODES_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    NODE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    EDGE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    HEAD_LOADINGS_FIELD_NUMBER: _ClassVar[int]
    QK_EDGES_FIELD_NUMBER: _ClassVar[int]
    max_n_logits: int
    desired_logit_prob: float
    max_feature_nodes: int
    batch_size: int
    node_threshold: float
    edge_threshold: float
    targets: _containers.RepeatedCompositeFieldContainer[AttributionTarget]
    head_loadings: bool
    qk_edges: _containers.RepeatedCompositeFieldContainer[_graph_pb2.AttentionEdge]
    def __init__(self, max_n_logits: _Optional[int] = ..., desired_logit_prob: _Optional[float] = ..., max_feature_nodes: _Optional[int] = ..., batch_size: _Optional[int] = ..., node_threshold: _Optional[float] = ..., edge_threshold: _Optional[float] = ..., targets: _Optional[_Iterable[_Union[AttributionTarget, _Mapping]]] = ..., head_loadings: _Optional[bool] = ..., qk_edges: _Optional[_Iterable[_Union[_graph_pb2.AttentionEdge, _Mapping]]] = ...) -> None: ...

class AttributeRequest(_message.Message):
    __slots__ = ("prompt", "prompt_token_ids", "request_id", "token_index", "settings", "output", "background", "messages", "job_class")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_INDEX_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    JOB_CLASS_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    request_id: str
    token_index: int
    settings: AttributionSettings
    output: GraphOutput
    background: bool
    messages: _containers.RepeatedCompositeFieldContainer[_chat_pb2.ChatMessage]
    job_class: JobClass
    def __init__(self, prompt: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., request_id: _Optional[str] = ..., token_index: _Optional[int] = ..., settings: _Optional[_Union[AttributionSettings, _Mapping]] = ..., output: _Optional[_Union[GraphOutput, str]] = ..., background: _Optional[bool] = ..., messages: _Optional[_Iterable[_Union[_chat_pb2.ChatMessage, _Mapping]]] = ..., job_class: _Optional[_Union[JobClass, str]] = ...) -> None: ...

class AttributeAccepted(_message.Message):
    __slots__ = ("key", "token_ids", "audited_token_id")
    KEY_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    AUDITED_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    key: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    audited_token_id: int
    def __init__(self, key: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., audited_token_id: _Optional[int] = ...) -> None: ...

class AttributeQueued(_message.Message):
    __slots__ = ("position",)
    POSITION_FIELD_NUMBER: _ClassVar[int]
    position: int
    def __init__(self, position: _Optional[int] = ...) -> None: ...

class AttributeRunning(_message.Message):
    __slots__ = ("phase", "fraction")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    phase: str
    fraction: float
    def __init__(self, phase: _Optional[str] = ..., fraction: _Optional[float] = ...) -> None: ...

class AttributionResult(_message.Message):
    __slots__ = ("graph", "frontend_json", "source")
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    FRONTEND_JSON_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    graph: _graph_pb2.Graph
    frontend_json: bytes
    source: str
    def __init__(self, graph: _Optional[_Union[_graph_pb2.Graph, _Mapping]] = ..., frontend_json: _Optional[bytes] = ..., source: _Optional[str] = ...) -> None: ...

class AttributeResponse(_message.Message):
    __slots__ = ("key", "accepted", "queued", "running", "result", "result_header", "result_chunk")
    KEY_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    RESULT_HEADER_FIELD_NUMBER: _ClassVar[int]
    RESULT_CHUNK_FIELD_NUMBER: _ClassVar[int]
    key: str
    accepted: AttributeAccepted
    queued: AttributeQueued
    running: AttributeRunning
    result: AttributionResult
    result_header: ChunkedResultHeader
    result_chunk: ResultChunk
    def __init__(self, key: _Optional[str] = ..., accepted: _Optional[_Union[AttributeAccepted, _Mapping]] = ..., queued: _Optional[_Union[AttributeQueued, _Mapping]] = ..., running: _Optional[_Union[AttributeRunning, _Mapping]] = ..., result: _Optional[_Union[AttributionResult, _Mapping]] = ..., result_header: _Optional[_Union[ChunkedResultHeader, _Mapping]] = ..., result_chunk: _Optional[_Union[ResultChunk, _Mapping]] = ...) -> None: ...

class ChunkedResultHeader(_message.Message):
    __slots__ = ("total_bytes", "chunk_count", "crc32", "message_type")
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    total_bytes: int
    chunk_count: int
    crc32: int
    message_type: str
    def __init__(self, total_bytes: _Optional[int] = ..., chunk_count: _Optional[int] = ..., crc32: _Optional[int] = ..., message_type: _Optional[str] = ...) -> None: ...

class ResultChunk(_message.Message):
    __slots__ = ("index", "data")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    index: int
    data: bytes
    def __init__(self, index: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class GetGraphRequest(_message.Message):
    __slots__ = ("key", "output")
    KEY_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    key: str
    output: GraphOutput
    def __init__(self, key: _Optional[str] = ..., output: _Optional[_Union[GraphOutput, str]] = ...) -> None: ...

class GetGraphResponse(_message.Message):
    __slots__ = ("result",)
    RESULT_FIELD_NUMBER: _ClassVar[int]
    result: AttributionResult
    def __init__(self, result: _Optional[_Union[AttributionResult, _Mapping]] = ...) -> None: ...
