from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class QKComponentKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    QK_COMPONENT_KIND_UNSPECIFIED: _ClassVar[QKComponentKind]
    QK_COMPONENT_KIND_EMBEDDING: _ClassVar[QKComponentKind]
    QK_COMPONENT_KIND_FEATURE: _ClassVar[QKComponentKind]
    QK_COMPONENT_KIND_ERROR: _ClassVar[QKComponentKind]
    QK_COMPONENT_KIND_ATTENTION: _ClassVar[QKComponentKind]
    QK_COMPONENT_KIND_SKIP: _ClassVar[QKComponentKind]

class NodeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_KIND_UNSPECIFIED: _ClassVar[NodeKind]
    NODE_KIND_FEATURE: _ClassVar[NodeKind]
    NODE_KIND_ERROR: _ClassVar[NodeKind]
    NODE_KIND_EMBEDDING: _ClassVar[NodeKind]
    NODE_KIND_LOGIT: _ClassVar[NodeKind]
QK_COMPONENT_KIND_UNSPECIFIED: QKComponentKind
QK_COMPONENT_KIND_EMBEDDING: QKComponentKind
QK_COMPONENT_KIND_FEATURE: QKComponentKind
QK_COMPONENT_KIND_ERROR: QKComponentKind
QK_COMPONENT_KIND_ATTENTION: QKComponentKind
QK_COMPONENT_KIND_SKIP: QKComponentKind
NODE_KIND_UNSPECIFIED: NodeKind
NODE_KIND_FEATURE: NodeKind
NODE_KIND_ERROR: NodeKind
NODE_KIND_EMBEDDING: NodeKind
NODE_KIND_LOGIT: NodeKind

class Graph(_message.Message):
    __slots__ = ("identity", "prompt", "input_tokens", "input_token_strs", "n_layers", "settings", "nodes", "edges", "scores", "timings", "pruned", "n_nodes", "n_active_features", "head_loadings", "qk")
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKEN_STRS_FIELD_NUMBER: _ClassVar[int]
    N_LAYERS_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    PRUNED_FIELD_NUMBER: _ClassVar[int]
    N_NODES_FIELD_NUMBER: _ClassVar[int]
    N_ACTIVE_FEATURES_FIELD_NUMBER: _ClassVar[int]
    HEAD_LOADINGS_FIELD_NUMBER: _ClassVar[int]
    QK_FIELD_NUMBER: _ClassVar[int]
    identity: GraphIdentity
    prompt: str
    input_tokens: _containers.RepeatedScalarFieldContainer[int]
    input_token_strs: _containers.RepeatedScalarFieldContainer[str]
    n_layers: int
    settings: GraphSettings
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    edges: Edges
    scores: GraphScores
    timings: _containers.RepeatedCompositeFieldContainer[PhaseTiming]
    pruned: bool
    n_nodes: int
    n_active_features: int
    head_loadings: HeadLoadings
    qk: _containers.RepeatedCompositeFieldContainer[QKAttribution]
    def __init__(self, identity: _Optional[_Union[GraphIdentity, _Mapping]] = ..., prompt: _Optional[str] = ..., input_tokens: _Optional[_Iterable[int]] = ..., input_token_strs: _Optional[_Iterable[str]] = ..., n_layers: _Optional[int] = ..., settings: _Optional[_Union[GraphSettings, _Mapping]] = ..., nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ..., edges: _Optional[_Union[Edges, _Mapping]] = ..., scores: _Optional[_Union[GraphScores, _Mapping]] = ..., timings: _Optional[_Iterable[_Union[PhaseTiming, _Mapping]]] = ..., pruned: _Optional[bool] = ..., n_nodes: _Optional[int] = ..., n_active_features: _Optional[int] = ..., head_loadings: _Optional[_Union[HeadLoadings, _Mapping]] = ..., qk: _Optional[_Iterable[_Union[QKAttribution, _Mapping]]] = ...) -> None: ...

class AttentionEdge(_message.Message):
    __slots__ = ("layer", "head", "query_pos", "key_pos")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    QUERY_POS_FIELD_NUMBER: _ClassVar[int]
    KEY_POS_FIELD_NUMBER: _ClassVar[int]
    layer: int
    head: int
    query_pos: int
    key_pos: int
    def __init__(self, layer: _Optional[int] = ..., head: _Optional[int] = ..., query_pos: _Optional[int] = ..., key_pos: _Optional[int] = ...) -> None: ...

class QKAttribution(_message.Message):
    __slots__ = ("edge", "score", "capped_score", "pattern", "query", "key", "pair_query", "pair_key", "pair_weights", "threshold")
    EDGE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    CAPPED_SCORE_FIELD_NUMBER: _ClassVar[int]
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    PAIR_QUERY_FIELD_NUMBER: _ClassVar[int]
    PAIR_KEY_FIELD_NUMBER: _ClassVar[int]
    PAIR_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    edge: AttentionEdge
    score: float
    capped_score: float
    pattern: float
    query: QKSide
    key: QKSide
    pair_query: _containers.RepeatedScalarFieldContainer[int]
    pair_key: _containers.RepeatedScalarFieldContainer[int]
    pair_weights: _containers.RepeatedScalarFieldContainer[float]
    threshold: float
    def __init__(self, edge: _Optional[_Union[AttentionEdge, _Mapping]] = ..., score: _Optional[float] = ..., capped_score: _Optional[float] = ..., pattern: _Optional[float] = ..., query: _Optional[_Union[QKSide, _Mapping]] = ..., key: _Optional[_Union[QKSide, _Mapping]] = ..., pair_query: _Optional[_Iterable[int]] = ..., pair_key: _Optional[_Iterable[int]] = ..., pair_weights: _Optional[_Iterable[float]] = ..., threshold: _Optional[float] = ...) -> None: ...

class QKSide(_message.Message):
    __slots__ = ("position", "components", "rest", "constant", "n_components")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    REST_FIELD_NUMBER: _ClassVar[int]
    CONSTANT_FIELD_NUMBER: _ClassVar[int]
    N_COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    position: int
    components: _containers.RepeatedCompositeFieldContainer[QKComponent]
    rest: float
    constant: float
    n_components: int
    def __init__(self, position: _Optional[int] = ..., components: _Optional[_Iterable[_Union[QKComponent, _Mapping]]] = ..., rest: _Optional[float] = ..., constant: _Optional[float] = ..., n_components: _Optional[int] = ...) -> None: ...

class QKComponent(_message.Message):
    __slots__ = ("kind", "layer", "index", "contribution", "node_id")
    KIND_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    kind: QKComponentKind
    layer: int
    index: int
    contribution: float
    node_id: str
    def __init__(self, kind: _Optional[_Union[QKComponentKind, str]] = ..., layer: _Optional[int] = ..., index: _Optional[int] = ..., contribution: _Optional[float] = ..., node_id: _Optional[str] = ...) -> None: ...

class HeadLoadings(_message.Message):
    __slots__ = ("n_heads", "edges", "direct", "offsets", "heads", "weights", "rest", "threshold")
    N_HEADS_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    DIRECT_FIELD_NUMBER: _ClassVar[int]
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    REST_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    n_heads: int
    edges: _containers.RepeatedScalarFieldContainer[int]
    direct: _containers.RepeatedScalarFieldContainer[float]
    offsets: _containers.RepeatedScalarFieldContainer[int]
    heads: _containers.RepeatedScalarFieldContainer[int]
    weights: _containers.RepeatedScalarFieldContainer[float]
    rest: _containers.RepeatedScalarFieldContainer[float]
    threshold: float
    def __init__(self, n_heads: _Optional[int] = ..., edges: _Optional[_Iterable[int]] = ..., direct: _Optional[_Iterable[float]] = ..., offsets: _Optional[_Iterable[int]] = ..., heads: _Optional[_Iterable[int]] = ..., weights: _Optional[_Iterable[float]] = ..., rest: _Optional[_Iterable[float]] = ..., threshold: _Optional[float] = ...) -> None: ...

class GraphIdentity(_message.Message):
    __slots__ = ("model_id", "transcoder_id", "scan", "model_name")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    TRANSCODER_ID_FIELD_NUMBER: _ClassVar[int]
    SCAN_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    transcoder_id: str
    scan: str
    model_name: str
    def __init__(self, model_id: _Optional[str] = ..., transcoder_id: _Optional[str] = ..., scan: _Optional[str] = ..., model_name: _Optional[str] = ...) -> None: ...

class GraphSettings(_message.Message):
    __slots__ = ("max_n_logits", "desired_logit_prob", "max_feature_nodes", "batch_size", "node_threshold", "edge_threshold", "head_loadings", "qk_edges")
    MAX_N_LOGITS_FIELD_NUMBER: _ClassVar[int]
    DESIRED_LOGIT_PROB_FIELD_NUMBER: _ClassVar[int]
    MAX_FEATURE_NODES_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    NODE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    EDGE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    HEAD_LOADINGS_FIELD_NUMBER: _ClassVar[int]
    QK_EDGES_FIELD_NUMBER: _ClassVar[int]
    max_n_logits: int
    desired_logit_prob: float
    max_feature_nodes: int
    batch_size: int
    node_threshold: float
    edge_threshold: float
    head_loadings: bool
    qk_edges: _containers.RepeatedCompositeFieldContainer[AttentionEdge]
    def __init__(self, max_n_logits: _Optional[int] = ..., desired_logit_prob: _Optional[float] = ..., max_feature_nodes: _Optional[int] = ..., batch_size: _Optional[int] = ..., node_threshold: _Optional[float] = ..., edge_threshold: _Optional[float] = ..., head_loadings: _Optional[bool] = ..., qk_edges: _Optional[_Iterable[_Union[AttentionEdge, _Mapping]]] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("index", "kind", "layer", "position", "feature", "activation", "token_id", "contrast_token_id", "probability", "label", "influence", "node_id")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    CONTRAST_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    INFLUENCE_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    index: int
    kind: NodeKind
    layer: int
    position: int
    feature: int
    activation: float
    token_id: int
    contrast_token_id: int
    probability: float
    label: str
    influence: float
    node_id: str
    def __init__(self, index: _Optional[int] = ..., kind: _Optional[_Union[NodeKind, str]] = ..., layer: _Optional[int] = ..., position: _Optional[int] = ..., feature: _Optional[int] = ..., activation: _Optional[float] = ..., token_id: _Optional[int] = ..., contrast_token_id: _Optional[int] = ..., probability: _Optional[float] = ..., label: _Optional[str] = ..., influence: _Optional[float] = ..., node_id: _Optional[str] = ...) -> None: ...

class Edges(_message.Message):
    __slots__ = ("targets", "sources", "weights")
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    targets: _containers.RepeatedScalarFieldContainer[int]
    sources: _containers.RepeatedScalarFieldContainer[int]
    weights: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, targets: _Optional[_Iterable[int]] = ..., sources: _Optional[_Iterable[int]] = ..., weights: _Optional[_Iterable[float]] = ...) -> None: ...

class GraphScores(_message.Message):
    __slots__ = ("replacement_score", "completeness_score")
    REPLACEMENT_SCORE_FIELD_NUMBER: _ClassVar[int]
    COMPLETENESS_SCORE_FIELD_NUMBER: _ClassVar[int]
    replacement_score: float
    completeness_score: float
    def __init__(self, replacement_score: _Optional[float] = ..., completeness_score: _Optional[float] = ...) -> None: ...

class PhaseTiming(_message.Message):
    __slots__ = ("phase", "seconds")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    phase: str
    seconds: float
    def __init__(self, phase: _Optional[str] = ..., seconds: _Optional[float] = ...) -> None: ...
