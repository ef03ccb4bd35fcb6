"""Per-request attribution settings, validated with messages that say what to change."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from circuit_serve.domain.errors import InvalidRequest

MAX_QK_EDGES = 16  # attention edges one request may ask to explain (tracing/qk.py)


@dataclass(frozen=True)
class AttributionSettings:
    max_n_logits: int = 10  # at most this many logit targets
    desired_logit_prob: float = 0.95  # ...taken until their cumulative probability reaches this
    max_feature_nodes: int | None = None  # None: every active feature becomes a node
    batch_size: int = 256  # targets per transposed (backward) pass
    node_threshold: float = 0.8  # pruning: cumulative node influence kept
    edge_threshold: float = 0.98  # pruning: cumulative edge influence kept
    head_loadings: bool = False  # split each kept edge by attention head (tracing/heads.py)
    # attention edges (layer, head, query_pos, key_pos) whose score to split (tracing/qk.py)
    qk_edges: tuple[tuple[int, int, int, int], ...] = ()

    def __post_init__(self) -> None:  # lists (JSON, protobuf) -> tuples: hashable and equal
        if isinstance(self.qk_edges, (list, tuple)):
            edges = tuple(tuple(e) if isinstance(e, (list, tuple)) else e for e in self.qk_edges)
            object.__setattr__(self, "qk_edges", edges)

    def validate(self) -> AttributionSettings:
        def unit(name: str, v: float) -> None:
            if not isinstance(v, (int, float)) or not 0.0 < float(v) <= 1.0:
                raise InvalidRequest(f"must be in (0, 1], got {v!r}", field=name)

        def positive(name: str, v) -> None:
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise InvalidRequest(f"must be an integer >= 1, got {v!r}", field=name)

        positive("max_n_logits", self.max_n_logits)
        unit("desired_logit_prob", self.desired_logit_prob)
        if self.max_feature_nodes is not None:
            positive("max_feature_nodes", self.max_feature_nodes)
        positive("batch_size", self.batch_size)
        unit("node_threshold", self.node_threshold)
        unit("edge_threshold", self.edge_threshold)
        if not isinstance(self.head_loadings, bool):
            raise InvalidRequest(f"must be true or false, got {self.head_loadings!r}", field="head_loadings")
        self._validate_qk_edges()
        return self

    def _validate_qk_edges(self) -> None:
        """Shape and order only; layers, heads and positions are checked against the model and
        the prompt by tracing/qk.py's check_edges."""
        if not isinstance(self.qk_edges, tuple) or len(self.qk_edges) > MAX_QK_EDGES:
            raise InvalidRequest(
                f"give at most {MAX_QK_EDGES} (layer, head, query_pos, key_pos) edges", field="qk_edges"
            )
        for i, e in enumerate(self.qk_edges):
            if (
                not isinstance(e, tuple)
                or len(e) != 4
                or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in e)
            ):
                raise InvalidRequest(
                    f"edge {i} must be four integers >= 0 (layer, head, query_pos, key_pos), got {e!r}",
                    field="qk_edges",
                )
            if e[3] > e[2]:
                raise InvalidRequest(
                    f"edge {i}: key_pos {e[3]} is after query_pos {e[2]} (attention is causal)", field="qk_edges"
                )

    def as_dict(self) -> dict:
        """The settings as JSON values (edges as lists), as they read back from the frontend JSON and job payloads."""
        return {**asdict(self), "qk_edges": [list(e) for e in self.qk_edges]}
