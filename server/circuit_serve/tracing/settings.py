"""Per-request attribution settings, validated with messages that say what to change."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from circuit_serve.domain.errors import InvalidRequest


@dataclass(frozen=True)
class AttributionSettings:
    max_n_logits: int = 10  # at most this many logit targets
    desired_logit_prob: float = 0.95  # ...taken until their cumulative probability reaches this
    max_feature_nodes: int | None = None  # None: every active feature becomes a node
    batch_size: int = 256  # targets per transposed (backward) pass
    node_threshold: float = 0.8  # pruning: cumulative node influence kept
    edge_threshold: float = 0.98  # pruning: cumulative edge influence kept
    head_loadings: bool = False  # split each kept edge by attention head (tracing/heads.py)

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
        return self

    def as_dict(self) -> dict:
        return asdict(self)
