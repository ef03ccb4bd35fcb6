"""The taps: watched-feature pre-activations computed inside vLLM's decoder layers.

Runs in vLLM's worker process (the engine core's, by default its own process). One `TapBank`
per worker holds the watched encoder rows of every column (see `columns`) and the step's
output table; each decoder layer's pre-MLP norm gets a subclass whose forward, in the model's own forward
pass, also computes its layer's block of columns from the residual stream it returns (TopK on
the CPU, a step of at most `HELD_TOKENS`: it keeps the normalized input, and the model's forward
computes every layer's full rows at once when the pass ends, `TapBank.finish_pass`):

    x      = x_mid (T, d)                      # the residual entering the pre-MLP norm
    r      = 1 / sqrt(mean(x^2) + eps)  (T, 1)  # the norm's scale, in float32
    pre    = x @ W.T + b                        # hook_resid_mid
           = (x * r) @ W.T + b                  # ln2.hook_normalized (normalized, before the gain)
           = (x * r) @ (W * g).T + b            # mlp.hook_in (g: the norm's gain, folded into the rows)
    active = pre > threshold                    # JumpReLU (threshold 0: ReLU)
           = pre >= kth(pre_full) and pre > 0   # TopK: kth largest of the layer's full row

which is the attribution engine's `x_in @ W_enc.T + b_enc` (tracing.local_model) with the
norm's gain folded into the rows. The tap is module code, not a
forward hook: it is traced by torch.compile and replayed by CUDA graphs (its outputs go to a
preallocated table). Reading the table and applying rules is the logits processor's job.
"""

from __future__ import annotations

import statistics
import time
from typing import NamedTuple

import torch
from torch import nn

from circuit_serve.monitoring.spec import MonitorSpec
from circuit_serve.monitoring.topk_gate import TopKGate, watched_of_rows

_BANK: TapBank | None = None  # this process's bank (one model per worker process)
# TopK steps of at most this many tokens (decoding) compute their full rows after the pass, all
# layers in one product (TapBank.finish_pass); longer ones (prefill) layer by layer.
HELD_TOKENS = 64


class _LayerColumns(NamedTuple):
    """One layer's block of columns: views of the bank's tensors."""

    any: bool  # the layer has columns
    w_t: torch.Tensor  # (d, C_l) encoder rows, folded, transposed
    b: torch.Tensor  # (C_l,)
    threshold: torch.Tensor  # (C_l,)
    index: torch.Tensor  # (C_l,) feature indices (TopK gather)
    in_use: torch.Tensor  # (C_l,) bool


def current_bank() -> TapBank | None:
    return _BANK


class TapBank:
    def __init__(
        self, spec: MonitorSpec, *, gains: list[torch.Tensor], eps: list[float], device: torch.device, max_tokens: int
    ) -> None:
        plan = spec.plan
        self.spec, self.plan = spec, plan
        self.eps = eps
        self.topk = spec.activation == "topk"
        self.k = spec.top_k or 0
        d, n_cols = spec.d_model, plan.n_columns
        # Gain folded into rows for mlp.hook_in; r applied after the product unless hook_resid_mid.
        self.scale_rows = [g.float().to(device) if spec.read_point == "mlp.hook_in" else None for g in gains]
        self.normalize = spec.read_point != "hook_resid_mid"
        self.W = torch.zeros(n_cols, d, device=device)  # encoder rows, folded
        self.b = torch.zeros(n_cols, device=device)
        self.threshold = torch.zeros(n_cols, device=device)
        self.index = torch.zeros(n_cols, dtype=torch.long, device=device)  # feature index (TopK gather)
        self.in_use = torch.zeros(n_cols, dtype=torch.bool, device=device)  # server columns, lent slots
        # TopK: each layer's whole encoder transposed, `(d, d_tc)`, as a copy or a view, whichever
        # multiplies faster here (transposed_copy_is_faster), and bias.
        # Stacked over the layers, `(L, d, d_tc)` and `(L, 1, d_tc)`, so a short step's rows of every
        # layer come from one batched product (`finish_pass`); `enc_t[layer]` are views of them.
        self.enc_t: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._held: torch.Tensor | None = None  # TopK on the CPU only (measured there: finish_pass)
        self.gate: TopKGate | None = None  # TopK on the CPU: most tokens skip the full row (topk_gate)
        if self.topk:
            encoders = [
                (self._fold(layer, w.to(device).float()), b.to(device).float())
                for layer, (w, b) in enumerate(spec.full_encoders)
            ]
            if transposed_copy_is_faster(encoders[0][0]):
                self._enc_w = torch.stack([w.T for w, _ in encoders])  # (L, d, d_tc) contiguous
            else:
                self._enc_w = torch.stack([w for w, _ in encoders]).transpose(1, 2)  # (L, d, d_tc) view
            self._enc_b = torch.stack([b for _, b in encoders]).unsqueeze(1)  # (L, 1, d_tc)
            del encoders
            self.enc_t = [(self._enc_w[layer], self._enc_b[layer, 0]) for layer in range(plan.n_layers)]
            if torch.device(device).type == "cpu":
                self.gate = TopKGate(plan.n_layers, self.enc_t[0][0].shape[1], self.k)
                # A short step's normalized inputs `(L, HELD_TOKENS, d)`, held until the pass ends.
                self._held = torch.zeros(plan.n_layers, HELD_TOKENS, d, device=device)
        self._held_layers: list[int] = []  # layers whose rows wait for finish_pass, in order
        self._held_n = 0
        for j, f in enumerate(plan.server):
            self.set_column(
                plan.server_columns[j],
                f.layer,
                f.index,
                spec.server_rows[j],
                spec.server_bias[j],
                spec.server_threshold[j],
            )
        # The step's output table, one contiguous block per layer (rows beyond the step's token
        # count are stale): pre-activations (T_max, C_l) float32 and active masks (T_max, C_l).
        caps = [plan.capacity(layer) for layer in range(plan.n_layers)]
        self.pre = [torch.zeros(max_tokens, c, device=device) for c in caps]
        self.active = [torch.zeros(max_tokens, c, dtype=torch.bool, device=device) for c in caps]
        # Each layer's slices of the columns' tensors, made once (views: set_column's writes show
        # through); a tap slices only its outputs, by the step's token count.
        w_t = self.W.T  # (d, C): each layer's columns are a contiguous slice of it
        self._columns = [
            _LayerColumns(
                hi > lo, w_t[:, lo:hi], self.b[lo:hi], self.threshold[lo:hi], self.index[lo:hi], self.in_use[lo:hi]
            )
            for lo, hi in ((plan.offset(layer), plan.offset(layer + 1)) for layer in range(plan.n_layers))
        ]
        # Off while no monitored request is in the batch (set by the logits processor before each
        # forward pass): unmonitored traffic then runs the model alone.
        self.enabled = False
        self.steer = None  # the steering bank (circuit_serve.monitoring.steer), set by its install
        # Set after each forward pass by the model class (see vllm_models): the batch layout.
        self.num_tokens = 0
        self.positions: torch.Tensor | None = None  # (T,) long, CPU
        self.query_start: list[int] = [0]  # (num_reqs + 1) token offsets of the batch's requests

    def _fold(self, layer: int, rows: torch.Tensor) -> torch.Tensor:
        g = self.scale_rows[layer]
        return rows if g is None else rows * g

    def set_column(self, column: int, layer: int, index: int, row, bias, threshold) -> None:
        """Point `column` at feature (`layer`, `index`) with its encoder row, bias and threshold."""
        self.index[column] = index
        self.in_use[column] = True
        if self.topk:
            if self.gate is not None:
                self.gate.forget_columns(layer)
            return  # TopK columns read the layer's full row
        row = torch.as_tensor(row, dtype=torch.float32).to(self.W.device)
        self.W[column] = self._fold(layer, row)
        self.b[column] = float(bias)
        self.threshold[column] = float(threshold)

    # ---- in the forward pass ----------------------------------------------------------------------

    def tap(self, layer: int, x_mid: torch.Tensor) -> None:
        """Fill layer `layer`'s columns of the table from its residual `x_mid (T, d)`."""
        cols = self._columns[layer]
        if not cols.any or not self.enabled:
            return
        n = x_mid.shape[0]
        x = self.normalized(layer, x_mid)
        if self._held is not None and n <= HELD_TOKENS and not (self.gate is not None and self.gate.ready(layer, n)):
            # a short step: every layer's full row at once, after the pass
            if self._held_layers and layer <= self._held_layers[-1]:  # a pass that did not finish (it raised)
                self._held_layers = []
            self._held[layer, :n].copy_(x)  # copied: the residual stream is updated in place later on
            self._held_layers.append(layer)
            self._held_n = n
            return
        pre, active = self.pre[layer][:n], self.active[layer][:n]  # (T, C_l) outputs
        if self.gate is not None:
            w_t, b_full = self.enc_t[layer]
            self.gate.tap(layer, x, w_t, b_full, cols.index, cols.in_use, pre, active)
        elif self.topk:
            w_t, b_full = self.enc_t[layer]
            full = torch.addmm(b_full, x, w_t)  # (T, d_tc)
            watched_of_rows(full, full.topk(self.k, dim=-1).values[:, -1:], cols.index, pre, active)
        else:
            torch.addmm(cols.b, x, cols.w_t, out=pre)  # (T, C_l)
            torch.gt(pre, cols.threshold, out=active)

    def finish_pass(self) -> None:
        """TopK on the CPU, after a short step's forward pass: the full rows of the layers `tap` held,
        from one batched product and one top-k, then each layer's watched columns, as `tap` computes
        them layer by layer. Measured in vLLM's worker on the demo (16 streams, about 17 tokens a step,
        alternate steps one way and the other): 846 us of CPU a step against 1,004 us for the four
        products and top-ks taken between the model's layers."""
        layers, n = self._held_layers, self._held_n
        if not layers:
            return
        self._held_layers = []
        if len(layers) == len(self._columns):  # every layer: one product
            full = torch.baddbmm(self._enc_b, self._held[:, :n], self._enc_w)  # (L, T, d_tc)
        else:  # some layers: one product each (a batched one would copy their encoders)
            full = torch.stack([torch.addmm(self._enc_b[i, 0], self._held[i, :n], self._enc_w[i]) for i in layers])
        top = full.topk(self.k, dim=-1)  # (L', T, k)
        for j, layer in enumerate(layers):
            pre, active = self.pre[layer][:n], self.active[layer][:n]  # (T, C_l)
            watched_of_rows(full[j], top.values[j, :, -1:], self._columns[layer].index, pre, active)
            if self.gate is not None and self.gate.sentinels[layer] is None:
                self.gate.learn(layer, top.indices[j])

    def normalized(self, layer: int, x_mid: torch.Tensor) -> torch.Tensor:
        """`(T, d)` float32 `x_mid`, times the norm's scale `r` unless the read point is hook_resid_mid
        (the folded rows then give the transcoder's pre-activations, see the module docstring)."""
        x = x_mid.float()
        if self.normalize:  # x * rsqrt(mean(x^2) + eps), one fused op
            x = torch.nn.functional.rms_norm(x, (x.shape[-1],), eps=self.eps[layer])
        return x

    def fold(self, layer: int, rows: torch.Tensor) -> torch.Tensor:
        """Encoder rows `(n, d)` of `layer` with the norm's gain folded in where the read point needs it."""
        return self._fold(layer, rows.to(self.W.device).float())

    def note_batch(self, positions: torch.Tensor, query_start: list[int] | None) -> None:
        """The batch layout of the forward pass that just ran (token offsets per request; None
        while the taps are off)."""
        if not self.enabled or query_start is None:
            self.num_tokens = 0
            return
        self.num_tokens = query_start[-1] if query_start else 0
        self.positions = positions[: self.num_tokens].to("cpu", copy=True)
        self.query_start = query_start

    def read(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The last step's `(T,)` positions, `(T, C)` pre-activations and `(T, C)` active mask on the CPU."""
        n = self.num_tokens
        assert self.positions is not None
        pre = torch.cat([p[:n] for p in self.pre], 1)  # (T, C)
        active = torch.cat([a[:n] for a in self.active], 1)
        return self.positions, pre.cpu(), active.cpu()


def transposed_copy_is_faster(w: torch.Tensor, *, tokens: int = 16, rounds: int = 7, reps: int = 10) -> bool:
    """Whether a decoding step's `x (tokens, d) @ w.T` runs faster on a contiguous copy of `w.T`
    than on the view of `w (d_tc, d)`, timed here (the median of `rounds` interleaved runs of `reps`
    products each: one product takes tens of microseconds); off the CPU: the copy. The two differ
    by machine: a (16, 128) x (128, 1,024) product took 28 us on the copy and 44 us through the view
    on one 2-core machine, 76 us and 56 us on another."""
    if w.device.type != "cpu":
        return True
    x = torch.randn(tokens, w.shape[1], dtype=w.dtype)
    layouts = (w.T.contiguous(), w.T)
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for layout, spent in zip(layouts, times, strict=True):
            start = time.perf_counter()
            for _ in range(reps):
                torch.mm(x, layout)
            spent.append(time.perf_counter() - start)
    return statistics.median(times[0]) <= statistics.median(times[1])


_TAPPED_CLASSES: dict[type, type] = {}


def _tapped_forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
    """The norm's own forward, then its layer's taps on the residual it returns (x_mid)."""
    out = self._circuit_base.forward(self, x, residual)
    x_mid = out[1] if residual is not None else x  # (normalized, x_mid) with a residual
    bank = self._circuit_bank
    bank.tap(self._circuit_layer, x_mid)
    if bank.steer is not None and bank.steer.rows:
        bank.steer.on_input(self._circuit_layer, x_mid)
    return out


def subclass_in_place(module: nn.Module, forward, prefix: str, classes: dict[type, type], **attrs) -> None:
    """Give `module` a subclass of its class (one per base, kept in `classes`) whose forward is
    `forward` (which calls `self._circuit_base.forward`), and set `attrs` on it; its parameters
    keep their names, so vLLM's weight checks and loaders see the same module."""
    base = type(module)
    cls = classes.get(base)
    if cls is None:
        cls = type(f"{prefix}{base.__name__}", (base,), {"forward": forward, "_circuit_base": base})
        classes[base] = cls
    module.__class__ = cls
    for name, value in attrs.items():
        setattr(module, name, value)


def tap_norm(norm: nn.Module, bank: TapBank, layer: int) -> None:
    """Give `norm` (a pre-MLP RMSNorm) a subclass whose forward also taps."""
    subclass_in_place(norm, _tapped_forward, "Tapped", _TAPPED_CLASSES, _circuit_bank=bank, _circuit_layer=layer)


def install(model: nn.Module, spec: MonitorSpec, *, model_type: str, max_tokens: int) -> TapBank:
    """Tap each decoder layer's pre-MLP norm of a vLLM Llama / Gemma-2 / Qwen3 model."""
    global _BANK
    layers = model.model.layers
    norm_name = "pre_feedforward_layernorm" if model_type == "gemma2" else "post_attention_layernorm"
    if len(layers) != spec.plan.n_layers:
        raise ValueError(f"the transcoders have {spec.plan.n_layers} layers but the model has {len(layers)}")
    norms = [getattr(layer, norm_name) for layer in layers]
    gains = [(n.weight.detach().float() + 1.0) if model_type == "gemma2" else n.weight.detach().float() for n in norms]
    eps = [float(getattr(n, "variance_epsilon", getattr(n, "eps", 1e-6))) for n in norms]
    device = norms[0].weight.device
    bank = TapBank(spec, gains=gains, eps=eps, device=device, max_tokens=max_tokens)
    for i, norm in enumerate(norms):
        tap_norm(norm, bank, i)
    _BANK = bank
    return bank
