"""AttributionGraph (tracing engine) <-> circuit.v1.Graph (protobuf).

1. `graph_to_proto(graph, pruned=None)`: with a PruneResult, only the kept nodes and kept
   nonzero edges (what a viewer needs); without, every node and every nonzero edge.
2. `serialize_graph(graph, pruned)`: the same as bytes (the attribution service's serializer).
3. `graph_from_proto(msg)`: an AttributionGraph back from an unpruned message. Active features
   that were not selected are not in the message, so the result's `active_features` are the
   selected ones; adjacency, nodes, settings, identities and timings round-trip exactly.
"""

from __future__ import annotations

import torch

from circuit_proto.v1 import graph_pb2 as pb
from circuit_serve.tracing.frontend import node_id
from circuit_serve.tracing.graph import AttributionGraph
from circuit_serve.tracing.heads import HEAD_THRESHOLD
from circuit_serve.tracing.prune import PruneResult
from circuit_serve.tracing.settings import AttributionSettings

_KIND = {
    "feature": pb.NODE_KIND_FEATURE,
    "error": pb.NODE_KIND_ERROR,
    "embedding": pb.NODE_KIND_EMBEDDING,
    "logit": pb.NODE_KIND_LOGIT,
}


def _node(graph: AttributionGraph, i: int, influence: float) -> pb.Node:
    kind, layer, pos, idx = graph.node(i)
    n = pb.Node(
        index=i,
        kind=_KIND[kind],
        layer=layer,
        position=pos,
        feature=-1,
        contrast_token_id=-1,
        influence=influence,
        node_id=node_id(graph, i),
    )
    if kind == "feature":
        n.feature = idx
        n.activation = float(graph.activation_values[graph.selected_features[i]])
    elif kind == "embedding":
        n.token_id = idx
        n.label = graph.input_token_strs[pos]
    elif kind == "logit":
        k = i - graph.logit_offset
        n.token_id = idx
        c = graph.logit_contrast_ids[k]
        n.contrast_token_id = -1 if c is None else c
        n.probability = float(graph.logit_probabilities[k])
        n.label = graph.logit_labels[k]
    return n


def graph_to_proto(graph: AttributionGraph, pruned: PruneResult | None = None) -> pb.Graph:
    s = graph.settings
    replacement, completeness = graph.scores()
    msg = pb.Graph(
        identity=pb.GraphIdentity(
            model_id=graph.model_id,
            transcoder_id=graph.transcoder_id,
            scan=graph.scan or "",
            model_name=graph.model_name,
        ),
        prompt=graph.prompt,
        input_tokens=graph.input_tokens.tolist(),
        input_token_strs=graph.input_token_strs,
        n_layers=graph.n_layers,
        settings=pb.GraphSettings(
            max_n_logits=s.max_n_logits,
            desired_logit_prob=s.desired_logit_prob,
            max_feature_nodes=s.max_feature_nodes or 0,
            batch_size=s.batch_size,
            node_threshold=s.node_threshold,
            edge_threshold=s.edge_threshold,
            head_loadings=s.head_loadings,
            qk_edges=[_edge(e) for e in s.qk_edges],
        ),
        scores=pb.GraphScores(replacement_score=replacement, completeness_score=completeness),
        timings=[pb.PhaseTiming(phase=k, seconds=v) for k, v in graph.timings.items()],
        pruned=pruned is not None,
        n_nodes=graph.n_nodes,
        n_active_features=graph.n_active,
    )
    M = graph.compact_adjacency().cpu()  # (F + K, F + E + T)
    rows = graph.layout.row_nodes()
    if pruned is None:
        kept = range(graph.n_nodes)
        influence = [0.0] * graph.n_nodes
        keep_edges = M != 0
    else:
        kept = pruned.node_mask.nonzero().flatten().tolist()
        influence = pruned.cumulative_scores.tolist()
        keep_edges = pruned.edge_mask.cpu() & (M != 0)
        keep_edges &= pruned.node_mask[rows][:, None] & pruned.node_mask[: M.shape[1]][None, :]
    msg.nodes.extend(_node(graph, i, influence[i]) for i in kept)
    r, c = keep_edges.nonzero(as_tuple=True)
    msg.edges.targets.extend(rows[r].tolist())
    msg.edges.sources.extend(c.tolist())
    msg.edges.weights.extend(M[r, c].tolist())
    if graph.head_loadings is not None:
        _head_loadings(msg, graph, r.tolist(), c.tolist())
    msg.qk.extend(_qk(a.compact()) for a in graph.qk)
    return msg


def _edge(e) -> pb.AttentionEdge:
    layer, head, query_pos, key_pos = e
    return pb.AttentionEdge(layer=layer, head=head, query_pos=query_pos, key_pos=key_pos)


def _qk_side(side: dict) -> pb.QKSide:
    return pb.QKSide(
        position=side["position"],
        components=[
            pb.QKComponent(kind=kind + 1, layer=layer, index=index, contribution=w, node_id=name)
            for kind, layer, index, w, name in side["components"]
        ],
        rest=side["rest"],
        constant=side["constant"],
        n_components=side["n_components"],
    )


def _qk(c: dict) -> pb.QKAttribution:
    """One edge's QK attribution (QKAttribution.compact(): listed components, rest, constant)."""
    return pb.QKAttribution(
        edge=_edge(c["edge"]),
        score=c["score"],
        capped_score=c["capped_score"],
        pattern=c["pattern"],
        query=_qk_side(c["query"]),
        key=_qk_side(c["key"]),
        pair_query=[i for i, _, _ in c["pairs"]],
        pair_key=[j for _, j, _ in c["pairs"]],
        pair_weights=[w for _, _, w in c["pairs"]],
        threshold=c["threshold"],
    )


def _head_loadings(msg: pb.Graph, graph: AttributionGraph, rows: list[int], cols: list[int]) -> None:
    """The listed edges' head loadings (those computed: the kept edges at the graph's thresholds)."""
    hl = graph.head_loadings
    where = hl.index()
    H = int(hl.heads.shape[2])
    out = msg.head_loadings
    out.n_heads, out.threshold = H, HEAD_THRESHOLD
    for e, (r, c) in enumerate(zip(rows, cols)):
        i = where.get((r, c))
        if i is None:
            continue
        direct, listed, rest = hl.parts(i)
        out.edges.append(e)
        out.direct.append(direct)
        out.offsets.append(len(out.heads))
        out.heads.extend(layer * H + head for layer, head, _ in listed)
        out.weights.extend(w for _, _, w in listed)
        out.rest.append(rest)
    out.offsets.append(len(out.heads))


def serialize_graph(graph: AttributionGraph, pruned: PruneResult | None) -> bytes:
    return graph_to_proto(graph, pruned).SerializeToString()


def graph_from_proto(msg: pb.Graph) -> AttributionGraph:
    """Rebuild an AttributionGraph from an unpruned message (see module docstring)."""
    if msg.pruned:
        raise ValueError("a pruned circuit.v1.Graph lacks nodes and edges; rebuild from an unpruned one")
    feats = [n for n in msg.nodes if n.kind == pb.NODE_KIND_FEATURE]
    logits = [n for n in msg.nodes if n.kind == pb.NODE_KIND_LOGIT]
    F, K, L, P = len(feats), len(logits), msg.n_layers, len(msg.input_tokens)
    C = F + L * P + P
    edges = torch.zeros(F + K, C)
    t = torch.tensor(list(msg.edges.targets), dtype=torch.long)
    src = torch.tensor(list(msg.edges.sources), dtype=torch.long)
    row = torch.where(t < F, t, t - C + F)  # logit node C + k -> row F + k
    edges[row, src] = torch.tensor(list(msg.edges.weights), dtype=torch.float32)
    s = msg.settings
    return AttributionGraph(
        prompt=msg.prompt,
        input_tokens=torch.tensor(list(msg.input_tokens), dtype=torch.long),
        input_token_strs=list(msg.input_token_strs),
        n_layers=L,
        active_features=torch.tensor([[n.layer, n.position, n.feature] for n in feats], dtype=torch.long).reshape(
            -1, 3
        ),
        activation_values=torch.tensor([n.activation for n in feats], dtype=torch.float32),
        selected_features=torch.arange(F),
        logit_token_ids=torch.tensor([n.token_id for n in logits], dtype=torch.long),
        logit_contrast_ids=[None if n.contrast_token_id < 0 else n.contrast_token_id for n in logits],
        logit_labels=[n.label for n in logits],
        logit_probabilities=torch.tensor([n.probability for n in logits], dtype=torch.float32),
        edges=edges,
        settings=AttributionSettings(
            max_n_logits=s.max_n_logits,
            desired_logit_prob=s.desired_logit_prob,
            max_feature_nodes=s.max_feature_nodes or None,
            batch_size=s.batch_size,
            node_threshold=s.node_threshold,
            edge_threshold=s.edge_threshold,
            head_loadings=s.head_loadings,
            qk_edges=tuple((e.layer, e.head, e.query_pos, e.key_pos) for e in s.qk_edges),
        ),
        model_id=msg.identity.model_id,
        transcoder_id=msg.identity.transcoder_id,
        scan=msg.identity.scan or None,
        model_name=msg.identity.model_name,
        timings={p.phase: p.seconds for p in msg.timings},
    )
