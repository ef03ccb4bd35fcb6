"""QK attribution: why a head attended where it did, split by what the residual stream holds.

For one attention edge e = (layer l, head h, query position q, key position k) of the prompt's
local replacement model (norm denominators frozen, as everywhere in tracing/):

1. Components. The residual stream entering layer l at a position p is the sum of what was
   written there (recorded values, so the sum is the real residual):
       x_l[p] = embedding[p] + sum_{m<l} attention_m[p]
                + sum_{m<l} o_m (sum_f a_f W_dec_f + error_m[p] + skip_m(x_in_m[p]) + b_dec_m)
   where o_m is the frozen Gemma-2 post-feedforward norm factor (1 elsewhere), attention_m[p]
   layer m's attention output at p (with Gemma-2's frozen post-attention norm), a feature's
   decoder outputs to every layer below l are summed into one component (a cross-layer feature
   writes at several), and skip_m is the transcoder's linear skip. b_dec_m (and at BOS, where
   features and errors are zero, the whole MLP output but its skip) is a constant. Attention
   outputs and skips are components as they stand (what they carry from other positions and
   layers is the graph's and the head loadings' business), not traced further back.
2. Frozen Q and K maps. With the input-norm denominator r1[p] and (Qwen3) the per-head q_norm /
   k_norm denominators frozen at their values on the prompt, the query of head h is linear in
   the residual plus a constant (the projection bias, if the family has one):
       Q(x) = rope_q(s_q w_qn * (W_q^h (w1 r1[q] x)))        q_vec = sum_i Q(c_i) + Q_const
       K(x) = rope_k(s_k w_kn * (W_k^g (w1 r1[k] x)))        k_vec = sum_j K(c_j) + K_const
   (g the key/value group of h; RoPE is a rotation at the position, linear).
3. Score = scale * q_vec . k_vec: the pre-softmax value *before* Gemma-2's attention logit
   soft-capping (cap * tanh(score / cap), monotone, applied after) and before the causal /
   sliding-window mask; scale = head_dim^-0.5, Gemma-2 query_pre_attn_scalar^-0.5.
   - query side: scale * Q(c_i) . k_vec, summing to score - scale * Q_const . k_vec
   - key side:   scale * q_vec . K(c_j), summing to score - scale * q_vec . K_const
   - pairs:      scale * Q(c_i) . K(c_j), summing to score minus every term with a constant.
   Q_const / K_const hold the constant components (b_dec, BOS MLP outputs) and the biases.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from circuit_serve.domain.errors import InvalidRequest
from circuit_serve.tracing.local_model import LocalReplacement

QK_THRESHOLD = 1e-3  # exports list a contribution above this share of the side's sum of |contributions|
QK_TOP_PAIRS = 32  # exports list this many (query, key) component pairs, strongest first

# component kinds (listed: the embedding, per lower layer its attention, skip and error, then the features)
EMBEDDING, FEATURE, ERROR, ATTENTION, SKIP = range(5)


@dataclass(frozen=True)
class QKEdge:
    layer: int
    head: int
    query_pos: int
    key_pos: int


@dataclass
class QKSide:
    """The components of the residual stream entering the layer at one position, and their
    contributions to the score (one side of the split)."""

    position: int
    kinds: torch.Tensor  # (n,) long: EMBEDDING, FEATURE, ERROR, ATTENTION, SKIP
    # (n,) long: a feature's layer, the layer that wrote an error / attention output / skip; embedding -1
    layers: torch.Tensor
    index: torch.Tensor  # (n,) long: features their feature index, the embedding its token id, else -1
    values: torch.Tensor  # (n,) float32 contributions
    constant: float  # the side's constant term: score = values.sum() + constant

    def __len__(self) -> int:
        return len(self.values)

    def name(self, i: int) -> str:
        """Component i as the frontend names nodes (attention and skip: "attn_{layer}_{pos}", "skip_...")."""
        kind, layer, idx, p = int(self.kinds[i]), int(self.layers[i]), int(self.index[i]), self.position
        if kind == FEATURE:
            return f"{layer}_{idx}_{p}"
        if kind == EMBEDDING:
            return f"E_{idx}_{p}"
        return f"{('err', 'attn', 'skip')[kind - ERROR]}_{layer}_{p}"

    def listed(self, threshold: float = QK_THRESHOLD, also: Sequence[int] = ()) -> tuple[list[int], float]:
        """(components with |value| >= threshold x sum |values| and those in `also`, strongest
        first; the sum of the rest)."""
        scale = float(self.values.abs().sum())
        keep = set(torch.nonzero(self.values.abs() >= threshold * scale).flatten().tolist()) | set(also)
        order = sorted(keep, key=lambda i: -abs(float(self.values[i])))
        return order, float(self.values.sum()) - float(self.values[order].sum())

    def compact(self, threshold: float, also: Sequence[int] = ()) -> dict:
        """The listed components as plain values (what the exports write)."""
        order, rest = self.listed(threshold, also)
        comps = [
            (int(self.kinds[i]), int(self.layers[i]), int(self.index[i]), float(self.values[i]), self.name(i))
            for i in order
        ]
        return {
            "position": self.position,
            "components": comps,
            "rest": rest,
            "constant": self.constant,
            "n_components": len(self),
            "order": order,
        }


@dataclass
class QKAttribution:
    edge: QKEdge
    score: float  # scale * q . k before soft-capping and masking
    capped: float  # after Gemma-2's attention soft-capping (= score elsewhere)
    pattern: float  # the head's recorded attention weight on the key
    query: QKSide
    key: QKSide
    pair_rows: torch.Tensor  # (n_pairs,) long components of the query side
    pair_cols: torch.Tensor  # (n_pairs,) long components of the key side
    pair_values: torch.Tensor  # (n_pairs,) float32: scale * Q(c_i) . K(c_j), strongest first

    def compact(self, threshold: float = QK_THRESHOLD) -> dict:
        """Plain values for the exports: each side's listed components (above `threshold` x the
        side's sum of |contributions|, and those of the top pairs), strongest first, its rest and
        constant; the pairs as indexes into the listed components."""
        q = self.query.compact(threshold, self.pair_rows.tolist())
        k = self.key.compact(threshold, self.pair_cols.tolist())
        qi, ki = {c: i for i, c in enumerate(q.pop("order"))}, {c: i for i, c in enumerate(k.pop("order"))}
        e = self.edge
        return {
            "edge": (e.layer, e.head, e.query_pos, e.key_pos),
            "score": self.score,
            "capped_score": self.capped,
            "pattern": self.pattern,
            "threshold": threshold,
            "query": q,
            "key": k,
            "pairs": [
                (qi[int(r)], ki[int(c)], float(w)) for r, c, w in zip(self.pair_rows, self.pair_cols, self.pair_values)
            ],
        }


def check_edges(edges, n_layers: int, n_heads: int, n_pos: int) -> tuple[QKEdge, ...]:
    """Requested (layer, head, query_pos, key_pos) edges (their shape checked by
    AttributionSettings.validate) against the model and the prompt: InvalidRequest naming qk_edges."""
    out = []
    for i, e in enumerate(edges):
        e = e if isinstance(e, QKEdge) else QKEdge(*e)
        where = f"edge {i} {(e.layer, e.head, e.query_pos, e.key_pos)}"  # the field prefixes "qk_edges: "
        if not 0 <= e.layer < n_layers:
            raise InvalidRequest(f"{where}: layer must be below {n_layers} (the model's layers)", field="qk_edges")
        if not 0 <= e.head < n_heads:
            raise InvalidRequest(f"{where}: head must be below {n_heads} (heads per layer)", field="qk_edges")
        if not 0 <= e.key_pos <= e.query_pos < n_pos:
            raise InvalidRequest(
                f"{where}: need key_pos <= query_pos < {n_pos} (the prompt's tokens, BOS included)", field="qk_edges"
            )
        out.append(e)
    return tuple(out)


def _components(lrm: LocalReplacement, layer: int, p: int, x_mid: torch.Tensor):
    """Phase 1 at position p: (kinds, layers, index) (n,), vectors (n, d) and the constant (d,).
    x_mid (>= layer, d): the residual after attention of every layer at p (recorded)."""
    rec, tcs, d, dev = lrm.rec, lrm.tcs, lrm.d, lrm.device
    meta: list[tuple[int, int, int]] = [(EMBEDDING, -1, int(rec.tokens[p]))]
    vecs: list[torch.Tensor] = [rec.x0[p]]
    const = torch.zeros(d, device=dev)
    feats: dict[int, torch.Tensor] = {}  # active row -> summed decoder outputs below `layer`
    resid = rec.x0[p]  # x_m[p], the residual entering layer m
    for m in range(layer):
        meta.append((ATTENTION, m, -1))
        vecs.append(x_mid[m] - resid)
        o = lrm.out_f[m][p] if lrm.out_f[m] is not None else torch.ones(d, device=dev)  # (d,)
        y = rec.y[m][p]  # MLP output at the transcoder's output hook
        resid = x_mid[m] + y * o
        skip = tcs.skip(m, rec.x_in[m][p : p + 1])
        skip = torch.zeros(d, device=dev) if skip is None else skip[0].float()
        if tcs.W_skip is not None:
            meta.append((SKIP, m, -1))
            vecs.append(skip * o)
        if p == 0:  # BOS: no features, no error; the MLP output but its skip is a constant
            const += (y - skip) * o
            continue
        const += tcs.b_dec[m].float() * o
        meta.append((ERROR, m, -1))
        vecs.append(lrm.errors[m, p] * o)
        for grp in lrm.groups[m]:
            if grp.pos != p:
                continue
            for col, v in zip(grp.cols.tolist(), grp.vecs() * o):
                feats[col] = feats[col] + v if col in feats else v
    for col in sorted(feats):
        src_layer, _, f = lrm.acts.indices[col].tolist()
        meta.append((FEATURE, src_layer, f))
        vecs.append(feats[col])
    info = torch.tensor(meta, dtype=torch.long).reshape(-1, 3)
    return info, torch.stack(vecs), const


def _rotary(arch, p: int, dh: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) (dh,) of the model's rotary embedding at position p, float32."""
    dummy = torch.zeros(1, 1, dh, device=device)
    cos, sin = arch.rotary(dummy, torch.tensor([[p]], device=device))
    return cos.reshape(-1).float(), sin.reshape(-1).float()


def _project(lrm: LocalReplacement, layer: int, p: int, vecs: torch.Tensor, const: torch.Tensor, which: str, row: int):
    """Phase 2: the frozen map of one side, head row-block `row` of q_proj / k_proj.
    vecs (n, d), const (d,) -> (n, dh) projected components and (dh,) the constant."""
    arch = lrm.arch
    attn = arch.layers[layer].attn
    dh = arch.head_dim
    proj = attn.q_proj if which == "q" else attn.k_proj
    W = proj.weight[row * dh : (row + 1) * dh].float()  # (dh, d)
    f1 = lrm.norm1_f[layer][p]  # (d,) frozen input-norm factor at p
    out = (vecs * f1) @ W.T  # (n, dh)
    c = (const * f1) @ W.T  # (dh,)
    if proj.bias is not None:
        c = c + proj.bias[row * dh : (row + 1) * dh].float()
    qk_norm = getattr(attn, f"{which}_norm", None)  # Qwen3: RMSNorm over the head dim
    if qk_norm is not None:
        total = out.sum(0) + c  # the head's real (pre-norm) query or key
        s = arch.norm_scale(qk_norm, total) * arch.norm_weight(qk_norm)  # (dh,) frozen
        out, c = out * s, c * s
    cos, sin = _rotary(arch, p, dh, vecs.device)

    def rope(x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rot = torch.cat([-x[..., half:], x[..., :half]], -1)
        return x * cos + rot * sin

    return rope(out), rope(c)


def _pattern(lrm: LocalReplacement, e: QKEdge) -> float:
    for blk in lrm.rec.patterns[e.layer]:
        if blk.q0 <= e.query_pos < blk.q1:
            return float(blk.weights[e.head, e.query_pos - blk.q0, e.key_pos])
    return 0.0


@torch.inference_mode()
def qk_attribution(lrm: LocalReplacement, edge: QKEdge, top_pairs: int = QK_TOP_PAIRS) -> QKAttribution:
    """Split the pre-softmax score of one attention edge (see the module docstring). The record
    must hold x_mid at both positions (`record(..., keep_mid=...)`)."""
    arch, x_mid = lrm.arch, lrm.rec.x_mid
    li, h, qp, kp = edge.layer, edge.head, edge.query_pos, edge.key_pos
    g = h // (arch.n_heads // arch.n_kv_heads)  # the key/value group of head h
    attn = arch.layers[li].attn
    # Phase 1: components at both positions
    q_info, q_vecs, q_const = _components(lrm, li, qp, x_mid[qp])
    k_info, k_vecs, k_const = _components(lrm, li, kp, x_mid[kp])
    # Phase 2: frozen Q and K maps
    Qc, Q0 = _project(lrm, li, qp, q_vecs, q_const, "q", h)  # (n_q, dh), (dh,)
    Kc, K0 = _project(lrm, li, kp, k_vecs, k_const, "k", g)  # (n_k, dh), (dh,)
    q_vec, k_vec = Qc.sum(0) + Q0, Kc.sum(0) + K0  # (dh,)
    # Phase 3: the score and its splits
    scale = float(attn.scaling)
    score = scale * float(q_vec @ k_vec)
    cap = getattr(attn, "attn_logit_softcapping", None)
    capped = cap * float(torch.tanh(torch.tensor(score / cap))) if cap else score
    pairs = (scale * (Qc @ Kc.T)).cpu()  # (n_q, n_k)
    n = min(top_pairs, pairs.numel())
    top = torch.topk(pairs.abs().flatten(), n).indices
    return QKAttribution(
        edge=edge,
        score=score,
        capped=capped,
        pattern=_pattern(lrm, edge),
        query=QKSide(qp, *q_info.T, values=(scale * (Qc @ k_vec)).cpu(), constant=scale * float(Q0 @ k_vec)),
        key=QKSide(kp, *k_info.T, values=(scale * (Kc @ q_vec)).cpu(), constant=scale * float(q_vec @ K0)),
        pair_rows=top // pairs.shape[1],
        pair_cols=top % pairs.shape[1],
        pair_values=pairs.flatten()[top],
    )
