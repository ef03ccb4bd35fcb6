"""The local replacement model of one prompt, and its transpose.

Method (server/docs/design.md, "The attribution method"), with P prompt positions, d = hidden size, L layers:

1. Record: one forward pass of the real HF model stores, per layer, the attention patterns
   (H, P, P), the RMSNorm denominators r (P, 1) of every norm on the residual path, the
   transcoder input x_in (P, d) and the MLP output y (P, d) at the hooks the transcoder config
   names, plus the embeddings x0 (P, d) and the last position's logits.
2. Features and errors: a = act(x_in @ W_enc.T + b_enc) per layer, zeroed at position 0 (BOS);
   error = y - (sum_s a_s W_dec_s + b_dec + skip(x_in)), zeroed at position 0.
3. With patterns and denominators frozen and every MLP replaced by
   `skip(x_in) + features + error + constants`, the residual stream is linear in the
   embeddings and in whatever is written at the MLP outputs. Its transpose carries a target
   vector (an encoder row injected at a feature's x_in, or a demeaned unembedding column
   injected after the final norm) down the layers:
       g_mid = g + T_in^T (g_hook @ W_skip + injected encoder rows)     (skip + target features)
       g     = g_mid + (r1 w1) * (A^T (g_att @ W_o)) @ W_v              (attention OV, frozen A)
   and reads the direct effects on the way: `a_s W_dec_s . g_hook[pos_s]` for features,
   `error . g_hook` for error nodes and `x0 . g` for embeddings. No autograd is involved; the
   "backward pass" of a batch of B targets is this explicit transposed pass on (B, P, d).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from circuit_serve.domain.errors import Cancelled
from circuit_serve.tracing.architecture import Architecture
from circuit_serve.tracing.transcoders import TranscoderSet

PATTERN_BLOCK = 512  # query positions per stored pattern block
# Floating-point work between two polls of the stop flag in the transposed pass (about 0.1 s on
# 2 CPU cores): a layer's dense work is done in slices of target rows of at most this much.
POLL_FLOPS = 4e9
MIN_SLICE_POSITIONS = 2048  # but no slice below this many (target, position) rows: small operations
# cost far more than their flops on a loaded machine (measured: 2-row slices of a 128-token graph
# took 3.6x the CPU time of whole layers)


@dataclass
class PatternBlock:
    """Queries [q0, q1) of one layer's attention pattern, keys [0, q1) only (the rest is 0: causal)."""

    q0: int
    q1: int
    weights: torch.Tensor  # (H, q1 - q0, q1)


def pattern_blocks(pattern: torch.Tensor, block: int | None = None) -> list[PatternBlock]:
    """(H, P, P) causal pattern -> query blocks holding about half of it (one block when P <= block,
    PATTERN_BLOCK by default)."""
    P = pattern.shape[-1]
    block = block or PATTERN_BLOCK
    if P <= block:
        return [PatternBlock(0, P, pattern)]
    return [
        PatternBlock(q0, min(q0 + block, P), pattern[:, q0 : q0 + block, : min(q0 + block, P)].clone())
        for q0 in range(0, P, block)
    ]


@dataclass
class PromptRecord:
    """Step 1: what one forward pass on the prompt leaves behind (all float32)."""

    tokens: torch.Tensor  # (P,) long
    x0: torch.Tensor  # (P, d) residual stream entering layer 0 (scaled embeddings)
    r1: list[torch.Tensor]  # L x (P, 1) input-norm denominators
    patterns: list[list[PatternBlock]]  # L x query blocks of the (H, P, P) attention patterns (causal part)
    r_pa: list[torch.Tensor | None]  # L x (P, 1) Gemma-2 post-attention norm denominators
    r2: list[torch.Tensor]  # L x (P, 1) pre-MLP norm denominators
    r_pf: list[torch.Tensor | None]  # L x (P, 1) Gemma-2 post-feedforward norm denominators
    x_in: list[torch.Tensor]  # L x (P, d) transcoder inputs
    y: list[torch.Tensor]  # L x (P, d) MLP outputs at the transcoder output hook
    r_final: torch.Tensor  # (P, 1) final-norm denominators
    logits: torch.Tensor  # (V,) last-position logits as the model returns them (soft-capped)
    final_hidden: torch.Tensor  # (P, d) final-norm output (pre-unembedding)
    x_mid: dict[int, torch.Tensor] = field(
        default_factory=dict
    )  # pos -> (L, d) residual after attention (kept positions)


def _first_tensor(args, kwargs):
    if args:
        return args[0]
    return kwargs.get("hidden_states", next(iter(kwargs.values())))


StopCheck = Callable[[], bool] | None


def check_stop(should_stop: StopCheck, where: str) -> None:
    """Raise Cancelled when `should_stop()` says every caller left (polled inside long phases)."""
    if should_stop is not None and should_stop():
        raise Cancelled(f"attribution was cancelled ({where})")


@torch.inference_mode()
def record(
    model: torch.nn.Module,
    arch: Architecture,
    tcs: TranscoderSet,
    tokens: torch.Tensor,
    should_stop: StopCheck = None,
    keep_mid: Sequence[int] = (),
) -> PromptRecord:
    """Run the real model once on `tokens` (P,) and keep what attribution needs
    (`should_stop` is polled as each layer starts); `keep_mid`: positions whose residual after
    each layer's attention is kept (QK attribution, tracing/qk.py)."""
    L = arch.n_layers
    rec: dict[str, list] = {
        k: [None] * L for k in ("r1", "pat", "r_pa", "r2", "xmid", "mlp_in", "mlp_out", "r_pf", "pf_out")
    }
    top: dict[str, torch.Tensor] = {}
    handles = []

    def pre(key, li, norm):
        def fn(mod, args, kwargs):
            if key == "r1":
                check_stop(should_stop, f"forward pass, layer {li}")
            x = _first_tensor(args, kwargs)[0]
            rec[key][li] = arch.norm_scale(norm, x)
            if key == "r2":
                rec["xmid"][li] = x.float()

        return fn

    def out_hook(key, li, index=None):
        def fn(mod, args, out):
            o = out[index] if index is not None else out
            if key == "pat":
                if o is None:
                    raise RuntimeError("attention weights were not returned; the model must use eager attention")
                rec[key][li] = pattern_blocks(o[0].float())
            else:
                rec[key][li] = o[0].float()
            if key == "mlp_out":
                rec["mlp_in"][li] = args[0][0].float()

        return fn

    def grab_x0(mod, args, kwargs):
        top["x0"] = _first_tensor(args, kwargs)[0].float()

    def final_pre(mod, args, kwargs):
        top["r_final"] = arch.norm_scale(arch.final_norm, _first_tensor(args, kwargs)[0])

    def final_out(mod, args, out):
        top["final_hidden"] = out[0].float()

    try:
        handles.append(model.model.layers[0].register_forward_pre_hook(grab_x0, with_kwargs=True))
        for li, part in enumerate(arch.layers):
            handles.append(part.norm1.register_forward_pre_hook(pre("r1", li, part.norm1), with_kwargs=True))
            handles.append(part.attn.register_forward_hook(out_hook("pat", li, index=1)))
            if part.norm_pa is not None:
                handles.append(part.norm_pa.register_forward_pre_hook(pre("r_pa", li, part.norm_pa), with_kwargs=True))
            handles.append(part.norm2.register_forward_pre_hook(pre("r2", li, part.norm2), with_kwargs=True))
            handles.append(part.mlp.register_forward_hook(out_hook("mlp_out", li)))
            if part.norm_pf is not None:
                handles.append(part.norm_pf.register_forward_pre_hook(pre("r_pf", li, part.norm_pf), with_kwargs=True))
                handles.append(part.norm_pf.register_forward_hook(out_hook("pf_out", li)))
        handles.append(arch.final_norm.register_forward_pre_hook(final_pre, with_kwargs=True))
        handles.append(arch.final_norm.register_forward_hook(final_out))
        ids = tokens[None].to(arch.embed.weight.device)
        with eager_attention(model):
            try:  # only the last position's logits (V can be 256k)
                out = model(input_ids=ids, use_cache=False, logits_to_keep=1)
            except TypeError:
                out = model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()

    x_in, y = [], []
    for li, part in enumerate(arch.layers):
        x_in.append(transcoder_input(arch, tcs, li, rec["xmid"][li], rec["r2"][li]))
        if tcs.feature_output_hook == "hook_mlp_out" and part.norm_pf is not None:
            y.append(rec["pf_out"][li])
        else:
            y.append(rec["mlp_out"][li])
    return PromptRecord(
        tokens=tokens.cpu(),
        x0=top["x0"],
        r1=rec["r1"],
        patterns=rec["pat"],
        r_pa=rec["r_pa"],
        r2=rec["r2"],
        r_pf=rec["r_pf"],
        x_in=x_in,
        y=y,
        r_final=top["r_final"],
        logits=out.logits[0, -1].float(),
        final_hidden=top["final_hidden"],
        x_mid={p: torch.stack([rec["xmid"][li][p] for li in range(L)]) for p in sorted(set(keep_mid))},
    )


class eager_attention:
    """Context manager: switch the model to eager attention (patterns are returned) and back."""

    def __init__(self, model):
        self.model = model
        self.old = getattr(model.config, "_attn_implementation", None)

    def __enter__(self):
        if self.old != "eager":
            _set_attn(self.model, "eager")

    def __exit__(self, *exc):
        if self.old != "eager" and self.old is not None:
            _set_attn(self.model, self.old)


def _set_attn(model, impl: str) -> None:
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(impl)
    else:  # older transformers
        model.config._attn_implementation = impl


def input_transform(arch: Architecture, tcs: TranscoderSet, layer: int, r2: torch.Tensor) -> torch.Tensor | None:
    """Frozen linear map x_mid -> x_in as an elementwise factor: None (identity), (P,1) or (P,d)."""
    hook = tcs.feature_input_hook
    if hook == "hook_resid_mid":
        return None
    if hook == "ln2.hook_normalized":
        return r2
    return r2 * arch.norm_weight(arch.layers[layer].norm2)  # mlp.hook_in


def transcoder_input(arch, tcs, layer, x_mid, r2) -> torch.Tensor:
    f = input_transform(arch, tcs, layer, r2)
    return x_mid if f is None else x_mid * f


def output_transform(arch: Architecture, tcs: TranscoderSet, layer: int, rec: PromptRecord) -> torch.Tensor | None:
    """Frozen linear map from the transcoder's output hook to the residual stream (Gemma-2 + mlp.hook_out)."""
    part = arch.layers[layer]
    if part.norm_pf is None or tcs.feature_output_hook == "hook_mlp_out":
        return None
    return rec.r_pf[layer] * arch.norm_weight(part.norm_pf)


@dataclass
class SourceGroup:
    """Feature sources that write at one (output layer, position): their columns and, to form
    a_s W_dec_s when needed, their rows in the source layer's decoder table and activations."""

    pos: int
    cols: torch.Tensor  # (k,) long, columns among the active features
    table: torch.Tensor  # (n_u, d) decoder rows of the distinct features of the source layer (shared)
    rows: torch.Tensor  # (k,) long rows of `table`
    values: torch.Tensor  # (k,) activations
    held: torch.Tensor | None = None  # (k, d) the vectors, when LocalReplacement holds them

    def vecs(self) -> torch.Tensor:
        """(k, d) activation-scaled decoder vectors: held where every active feature's fit
        `hold_vectors_bytes`, else formed on use (held for every active feature of a long prompt
        they would take n_active x d floats)."""
        return self.held if self.held is not None else self.table[self.rows] * self.values[:, None]


@dataclass
class Activations:
    """Step 2 results: the active features (layer-major, then position, then feature index)."""

    indices: torch.Tensor  # (n, 3) long: layer, pos, feature
    values: torch.Tensor  # (n,) float32
    layer_offsets: list[int]  # first row of each layer in `indices`, plus n at the end


def compute_activations(
    tcs: TranscoderSet, rec: PromptRecord, zero_bos: bool = True, should_stop: StopCheck = None
) -> Activations:
    idx, vals, offsets = [], [], [0]
    for li, x in enumerate(rec.x_in):
        check_stop(should_stop, f"features, layer {li}")
        pre = tcs.pre_activations(li, x).float()  # (P, d_tc)
        act = tcs.activate(li, pre)
        if zero_bos:
            act[0] = 0
        nz = act.nonzero()  # (n_l, 2) row-major: (pos, feature)
        idx.append(torch.cat([torch.full_like(nz[:, :1], li), nz], 1))
        vals.append(act[nz[:, 0], nz[:, 1]])
        offsets.append(offsets[-1] + len(nz))
    return Activations(indices=torch.cat(idx).cpu(), values=torch.cat(vals), layer_offsets=offsets)


class LocalReplacement:
    """Steps 2-3 for one prompt: nodes' vectors and the transposed linear pass.

    Columns of every row it produces: [active features (n_active) | errors (L*P, layer-major) |
    embeddings (P)].
    """

    def __init__(
        self,
        arch: Architecture,
        tcs: TranscoderSet,
        rec: PromptRecord,
        acts: Activations,
        should_stop: StopCheck = None,
        hold_vectors_bytes: int = 0,
    ):
        self.arch, self.tcs, self.rec, self.acts = arch, tcs, rec, acts
        L, P, d = arch.n_layers, rec.x0.shape[0], arch.d_model
        self.n_layers, self.n_pos, self.d = L, P, d
        self.n_active = len(acts.values)
        self.error_offset = self.n_active
        self.token_offset = self.n_active + L * P
        self.n_cols = self.token_offset + P
        dev = rec.x0.device
        self.device = dev

        # Reconstruction and the per-output-layer source groups.
        recon = [tcs.b_dec[li].float().expand(P, d).clone() for li in range(L)]
        for li in range(L):
            s = tcs.skip(li, rec.x_in[li])
            if s is not None:
                recon[li] += s.float()
        per_layer: list[list[tuple]] = [[] for _ in range(L)]
        for li in range(L):
            check_stop(should_stop, f"decoder groups, layer {li}")
            lo, hi = acts.layer_offsets[li], acts.layer_offsets[li + 1]
            if hi == lo:
                continue
            pos, feat = acts.indices[lo:hi, 1].to(dev), acts.indices[lo:hi, 2].to(dev)
            vals = acts.values[lo:hi].to(dev).float()
            uniq, inv = torch.unique(feat, return_inverse=True)
            table = tcs.decoder_rows(li, uniq).float()  # (n_u, T, d), T output layers
            cols = torch.arange(lo, hi, device=dev)
            for k in range(table.shape[1]):
                tk = table[:, k].contiguous()
                for a in range(0, hi - lo, 65536):  # reconstruction in slices: never n x d at once
                    sl = slice(a, a + 65536)
                    recon[li + k].index_add_(0, pos[sl], tk[inv[sl]] * vals[sl, None])
                per_layer[li + k].append((pos, cols, tk, inv, vals))
        self.groups: list[list[SourceGroup]] = []
        n_vecs = sum(len(entry[0]) for entries in per_layer for entry in entries)
        hold = n_vecs * d * 4 <= hold_vectors_bytes  # fewer, larger operations in every transposed pass
        for lo_ in range(L):
            check_stop(should_stop, f"source groups, layer {lo_}")
            groups = []
            for pos, cols, table, inv, vals in per_layer[lo_]:
                order = torch.argsort(pos, stable=True)
                pos_s = pos[order]
                held = (table[inv[order]] * vals[order, None]) if hold else None  # (n, d) by position
                uniq, counts = torch.unique_consecutive(pos_s, return_counts=True)
                start = 0
                for p, c in zip(uniq.tolist(), counts.tolist()):
                    o = order[start : start + c]
                    grp = SourceGroup(p, cols[o], table, inv[o], vals[o])
                    grp.held = None if held is None else held[start : start + c]
                    groups.append(grp)
                    start += c
            groups.sort(key=lambda g: g.pos)
            self.groups.append(groups)
        self.errors = torch.stack([rec.y[li] - recon[li] for li in range(L)])  # (L, P, d)
        self.errors[:, 0] = 0

        # Frozen elementwise factors of the linear paths.
        self.in_f = [input_transform(arch, tcs, li, rec.r2[li]) for li in range(L)]
        self.out_f = [output_transform(arch, tcs, li, rec) for li in range(L)]
        self.norm1_f = [rec.r1[li] * arch.norm_weight(arch.layers[li].norm1) for li in range(L)]  # (P, d)
        self.pa_f = [
            None if part.norm_pa is None else rec.r_pa[li] * arch.norm_weight(part.norm_pa)
            for li, part in enumerate(arch.layers)
        ]
        self.final_f = rec.r_final[-1] * arch.norm_weight(arch.final_norm)  # (d,) at the last position

    # -- encoder (target) vectors of features ---------------------------------------------
    def encoder_vectors(self, feature_rows: torch.Tensor) -> torch.Tensor:
        """(k,) rows of `acts.indices` -> (k, d) encoder rows W_enc[layer][feature] in float32."""
        ids = self.acts.indices[feature_rows.cpu()]
        out = torch.empty(len(ids), self.d, device=self.device)
        for li in ids[:, 0].unique().tolist():
            m = (ids[:, 0] == li).to(self.device)
            out[m] = self.tcs.W_enc[li][ids[:, 2][ids[:, 0] == li].to(self.device)].float()
        return out

    # -- step 3: the transposed pass ------------------------------------------------------
    @staticmethod
    def _mm(g: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        """g (..., a) @ W (a, b) in W's dtype, back to float32."""
        if W.dtype == torch.float32:
            return g @ W
        return (g.to(W.dtype) @ W).float()

    def _attention_transpose(self, li: int, g: torch.Tensor, per_head: bool = False) -> torch.Tensor:
        """Transpose of x -> attention output (frozen pattern and norms): (k, p, d) -> (k, p, d),
        or with `per_head` each head's part, (k, H, p, d) (summing over heads gives the whole).
        p <= P: the first p positions only (exact when the gradient beyond them is zero: keys never
        follow their query)."""
        arch = self.arch
        part = arch.layers[li]
        k, P, _ = g.shape
        H, KV, dh = arch.n_heads, arch.n_kv_heads, arch.head_dim
        if self.pa_f[li] is not None:
            g = g * self.pa_f[li][:P]
        go = self._mm(g, part.attn.o_proj.weight).view(k, P, H, dh)  # (k, Pq, H, dh)
        blocks = self.rec.patterns[li]
        if len(blocks) == 1 and blocks[0].q1 == P:  # the whole pattern in one block
            gv = torch.einsum("hqs,bqhe->bshe", blocks[0].weights, go)  # (k, Pk, H, dh)
        else:
            gv = torch.zeros(k, P, H, dh, device=g.device)  # (k, Pk, H, dh)
            for blk in blocks:  # keys after a block's last query get nothing from it
                if blk.q0 >= P:
                    break
                q1 = min(blk.q1, P)
                gv[:, :q1] += torch.einsum("hqs,bqhe->bshe", blk.weights[:, : q1 - blk.q0, :q1], go[:, blk.q0 : q1])
        W_v = part.attn.v_proj.weight  # (KV * dh, d)
        if per_head:
            rep = H // KV
            heads = [self._mm(gv[:, :, h], W_v[(h // rep) * dh : (h // rep + 1) * dh]) for h in range(H)]
            return torch.stack(heads, 1) * self.norm1_f[li][:P]  # (k, H, P, d)
        gv = gv.reshape(k, P, KV * dh) if KV == H else gv.reshape(k, P, KV, H // KV, dh).sum(3).reshape(k, P, KV * dh)
        gh = self._mm(gv, W_v)  # (k, P, d)
        return gh * self.norm1_f[li][:P]

    def _through_layer(
        self,
        li: int,
        g: torch.Tensor,
        gh: torch.Tensor | None,
        a: int,
        k_out: int,
        positions: torch.Tensor,
        vectors: torch.Tensor,
        streams: int,
    ) -> torch.Tensor:
        """Rows [a, a + len(g)) of the batch from layer li's output down to its input: g (k, p, d)
        the gradient at the residual stream above layer li at its first p positions (p: past the
        rows' furthest target, zero beyond), gh (k_out, >= p, d) its part at the MLP output (the
        skip path's source); rows >= k_out are targets reading at layer li (their encoder vector
        injected at their position)."""
        k, P, d = g.shape
        b = a + k
        gx = None  # gradient at the transcoder input x_in, (k, P, d)
        if a < k_out and self.tcs.W_skip is not None:
            gx = torch.zeros(k, P, d, device=self.device)
            gx[: min(b, k_out) - a] = self._mm(gh[a : min(b, k_out), :P], self.tcs.W_skip[li])
        if b > k_out:
            if gx is None:
                gx = torch.zeros(k, P, d, device=self.device)
            s0 = max(a, k_out)
            r = torch.arange(s0 - a, k, device=self.device)
            gx[r, positions[s0:b]] += vectors[s0:b]
        gm = g if gx is None else g + (gx if self.in_f[li] is None else gx * self.in_f[li][:P])
        if streams == 1:
            return gm + self._attention_transpose(li, gm)
        J, H = streams, self.arch.n_heads
        total = gm.view(k // J, J, P, d).sum(1)
        gm = gm.clone()
        gm.view(k // J, J, P, d)[:, 1 + li * H : 1 + (li + 1) * H] += self._attention_transpose(
            li, total, per_head=True
        )
        return gm

    @torch.inference_mode()
    def rows(
        self,
        layers: torch.Tensor,
        positions: torch.Tensor,
        vectors: torch.Tensor,
        out: torch.Tensor,
        should_stop: StopCheck = None,
        streams: int = 1,
    ) -> None:
        """Direct effects of every node on B targets, written into `out` (B, n_cols), zeroed.

        layers (B,): a target's layer (L = the logits, read after the final norm at the last
        position); positions (B,); vectors (B, d): encoder rows (features) or demeaned
        unembedding directions (logits). Targets must be sorted by layer, descending.

        Head split (`streams` = 1 + L H): the batch holds each target `streams` times in a row
        (its vector in the first copy, zeros in the others); copy 0 carries the paths that cross
        no attention, copy 1 + layer * H + head those whose attention hop nearest the source is
        that head: at each attention layer every copy keeps its residual part and the heads'
        transposes of the copies' sum go to the heads' copies. The copies' rows sum to the row.
        """
        L, P, d = self.n_layers, self.n_pos, self.d
        B = len(layers)
        lay = layers.tolist()
        assert all(a >= b for a, b in zip(lay, lay[1:])), "targets must be sorted by layer, descending"
        vectors = vectors.float()
        positions = positions.to(self.device)
        g = torch.zeros(B, P, d, device=self.device)  # grad wrt the residual stream
        n_logit = sum(1 for a in lay if a == L)
        if n_logit:
            g[:n_logit, P - 1] = vectors[:n_logit] * self.final_f
        counts = torch.bincount(layers.cpu(), minlength=L + 1)
        above = int(counts[L])  # rows whose target sits above the current layer
        for li in range(L - 1, -1, -1):
            check_stop(should_stop, f"transposed pass, layer {li}")
            k_out = above  # rows alive at layer li's output (targets above layer li)
            k_in = above + int(counts[li])  # plus targets reading at layer li
            gh = None
            if k_out:
                gh = g[:k_out] if self.out_f[li] is None else g[:k_out] * self.out_f[li]  # (k, P, d)
                o = out[:k_out]
                for grp in self.groups[li]:
                    check_stop(should_stop, f"transposed pass, layer {li}, position {grp.pos}")
                    o.index_add_(1, grp.cols, gh[:, grp.pos] @ grp.vecs().T)  # (k, n_grp)
                err_cols = slice(self.error_offset + li * P, self.error_offset + (li + 1) * P)
                o[:, err_cols] += torch.einsum("bpd,pd->bp", gh, self.errors[li])
            if k_in == 0:
                continue
            # Skip path, encoder injection and attention, in slices of rows [a, b): one poll each,
            # over the positions up to the slice's furthest target (logits: P - 1); beyond it the
            # gradient is zero (causal attention, position-wise norms and MLPs).
            H, dh, J = self.arch.n_heads, self.arch.head_dim, streams
            per_row = 2 * P * (3 * d * d + H * P * dh)  # flops of one row: skip, o/v projections, pattern
            rows = max(int(POLL_FLOPS // per_row), -(-MIN_SLICE_POSITIONS // P))  # matmuls of >= 2048 rows
            step = max(J, rows // J * J)
            for a in range(0, k_in, step):
                check_stop(should_stop, f"transposed pass, layer {li}, attention, rows {a}")
                b = min(a + step, k_in)
                p = int(positions[a:b].max()) + 1
                g[a:b, :p] = self._through_layer(li, g[a:b, :p], gh, a, k_out, positions, vectors, J)
            above = k_in
        out[:, self.token_offset : self.token_offset + P] += torch.einsum("bpd,pd->bp", g, self.rec.x0)
