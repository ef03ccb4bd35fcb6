"""The frontend graph JSON (`metadata`, `qParams`, `nodes`, `links`) of a pruned graph.

Field meanings follow the open attribution-graph frontends (`influence` is the reference's cumulative
influence share at the node's rank; `node_influence`, our addition, the node's own influence). Node ids are unique by
construction: features `"{layer}_{feature}_{pos}"`, errors `"err_{layer}_{pos}"`, embeddings
`"E_{token}_{pos}"`, logits `"{L+1}_{token}_{pos}"` (the reference spells error ids
`"0_{layer}_{pos}"`, which collides with a layer-0 feature; we do not).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from circuit_serve.tracing.prune import CompactLayout, PruneResult
from circuit_serve.tracing.settings import AttributionSettings


class FrontendGraph(Protocol):
    """What the JSON is written from: an `AttributionGraph` (graph.py imports this module, not the reverse)."""

    n_layers: int
    activation_values: torch.Tensor  # (n_active,)
    selected_features: torch.Tensor  # (F,) indices into the active features
    logit_probabilities: torch.Tensor  # (K,)
    logit_labels: Sequence[str]
    logit_contrast_ids: Sequence[int | None]
    settings: AttributionSettings
    scan: str | None
    input_token_strs: list[str]
    prompt: str
    model_id: str
    transcoder_id: str
    model_name: str

    @property
    def logit_offset(self) -> int: ...  # index of the first logit node

    @property
    def layout(self) -> CompactLayout: ...

    def node(self, i: int) -> tuple[str, int, int, int]: ...

    def compact_adjacency(self) -> torch.Tensor: ...

    def scores(self) -> tuple[float, float]: ...


def _cantor(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def node_id(graph: FrontendGraph, i: int) -> str:
    """The unique frontend id of node i (see the module docstring)."""
    kind, layer, pos, idx = graph.node(i)
    if kind == "feature":
        return f"{layer}_{idx}_{pos}"
    if kind == "error":
        return f"err_{layer}_{pos}"
    if kind == "embedding":
        return f"E_{idx}_{pos}"
    c = graph.logit_contrast_ids[i - graph.logit_offset]
    return f"{graph.n_layers + 1}_{idx}_{pos}" if c is None else f"{graph.n_layers + 1}_{idx}_vs_{c}_{pos}"


def frontend_json(
    graph: FrontendGraph,
    pr: PruneResult,
    *,
    slug: str,
    labels: dict[tuple[int, int], str],
    thresholds: tuple[float, float],
) -> dict:
    L = graph.n_layers
    infl = pr.cumulative_scores.tolist()
    own = pr.node_influence.tolist()  # each node's own influence (the graph view sizes nodes by it)
    nodes: dict[int, dict] = {}
    for i in pr.node_mask.nonzero().flatten().tolist():
        kind, layer, pos, idx = graph.node(i)
        base = {
            "ctx_idx": pos,
            "influence": infl[i],
            "node_influence": own[i],
            "token_prob": 0.0,
            "is_target_logit": False,
            "run_idx": 0,
            "reverse_ctx_idx": 0,
            "clerp": "",
        }
        if kind == "feature":
            act = float(graph.activation_values[graph.selected_features[i]])
            base.update(
                node_id=node_id(graph, i),
                feature=_cantor(layer, idx),
                layer=str(layer),
                feature_type="cross layer transcoder",
                jsNodeId=f"{layer}_{idx}-0",
                activation=act,
                clerp=labels.get((layer, idx), ""),
            )
        elif kind == "error":
            nid = node_id(graph, i)
            base.update(
                node_id=nid,
                feature=-1,
                layer=str(layer),
                feature_type="mlp reconstruction error",
                jsNodeId=nid,
                activation=None,
            )
        elif kind == "embedding":
            base.update(
                node_id=node_id(graph, i),
                feature=pos,
                layer="E",
                feature_type="embedding",
                jsNodeId=f"E_{idx}-{pos}",
                activation=None,
            )
        else:
            k = i - graph.logit_offset
            p = float(graph.logit_probabilities[k])
            base.update(
                node_id=node_id(graph, i),
                feature=idx,
                layer=str(L + 1),
                feature_type="logit",
                jsNodeId=f"L_{idx}-{pos}",
                token_prob=p,
                is_target_logit=k == 0,
                activation=None,
                influence=None,
                node_influence=None,
                clerp=f'Output "{graph.logit_labels[k]}" (p={p:.3f})',
            )
        nodes[i] = base

    M = graph.compact_adjacency().cpu()
    rows = graph.layout.row_nodes()
    r_idx, c_idx = pr.edge_mask.nonzero(as_tuple=True)
    weights = M[r_idx, c_idx].tolist()  # one gather, not one tensor index per edge
    targets = rows[r_idx].tolist()
    links = []
    hl = getattr(graph, "head_loadings", None)
    where = hl.index() if hl is not None else {}
    for r, t, s, wgt in zip(r_idx.tolist(), targets, c_idx.tolist(), weights):
        if s in nodes and t in nodes and wgt != 0.0:
            link = {"source": nodes[s]["node_id"], "target": nodes[t]["node_id"], "weight": wgt}
            i = where.get((r, s))
            if i is not None:
                direct, listed, rest = hl.parts(i)
                link["head_loadings"] = {"direct": direct, "heads": [list(x) for x in listed], "rest": rest}
            links.append(link)
    used = {x for link in links for x in (link["source"], link["target"])}
    node_list = [n for n in nodes.values() if n["node_id"] in used or n["feature_type"] in ("embedding", "logit")]
    rep, comp = graph.scores()
    out = {
        "metadata": {
            "slug": slug,
            "scan": graph.scan or "",
            "transcoder_list": [],
            "prompt_tokens": graph.input_token_strs,
            "prompt": graph.prompt,
            "node_threshold": thresholds[0],
            "schema_version": 1,
            "info": {
                "model_id": graph.model_id,
                "transcoder_id": graph.transcoder_id,
                "model_name": graph.model_name,
                "replacement_score": rep,
                "completeness_score": comp,
                "edge_threshold": thresholds[1],
                "settings": graph.settings.as_dict(),
            },
        },
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": node_list,
        "links": links,
    }
    qk = getattr(graph, "qk", None)
    if qk:
        out["qk"] = [_qk_json(a.compact()) for a in qk]
    return out


def _qk_json(c: dict) -> dict:
    """One QK attribution (tracing/qk.py): components as [id, contribution], strongest first."""

    def side(s: dict) -> dict:
        comps = [[name, w] for _, _, _, w, name in s["components"]]
        return {"position": s["position"], "components": comps, "rest": s["rest"], "constant": s["constant"]}

    q, k = side(c["query"]), side(c["key"])
    layer, head, query_pos, key_pos = c["edge"]
    return {
        "layer": layer,
        "head": head,
        "query_pos": query_pos,
        "key_pos": key_pos,
        "score": c["score"],
        "capped_score": c["capped_score"],
        "pattern": c["pattern"],
        "threshold": c["threshold"],
        "query": q,
        "key": k,
        "pairs": [[q["components"][i][0], k["components"][j][0], w] for i, j, w in c["pairs"]],
    }
