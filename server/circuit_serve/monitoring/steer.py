"""Steering inside vLLM's forward pass: per-request feature interventions, in the worker process.

The same semantics as the replacement model's steering (`circuit_serve.features.steering`). For a
request with interventions (its `SteerArgs` travel in `SamplingParams.extra_args[STEER_KEY]`,
see `wire`) and only for its tokens `s:e` of the step (the batch layout of the forward pass:
`query_start`, in the persistent batch's order, as the taps read it), at each layer `l` it reads:

    x      = bank.normalized(l, x_mid[s:e])   (n, d) float32   # as the taps (`taps` docstring)
    pre_f  = x @ w_f + b_f                     (n,)             # w_f: the feature's folded encoder row
    a_f    = pre_f * (pre_f > thr_f)           (n,)             # ReLU (thr 0) / JumpReLU
           = pre_f.clamp(min=0) where pre_f >= kth(x @ W_l.T + b_l) else 0   # TopK
    a'_f   = op(a_f) at the request's masked positions, a_f elsewhere        # in request order
    delta  = (a'_f - a_f)[:, None] * W_dec[f][k]   (n, d)      # for k = 0 .. n_out - 1

and the MLP output of layer `l + k` (Gemma-2 with hook_mlp_out: the post-feedforward norm's
output, where the transcoder's output is read) gains `delta` at rows `s:e`. Masks use absolute
positions: a prompt position p when listed (or every prompt position with all_prompt), every
position >= n_prompt (a generated token fed back) with generated. Other rows of the batch are
not touched: a step without steered requests runs the model alone.

An intervention of a `steer` watch rule (`SteerEntry.rule >= 0`) is off until the monitor's
logits processor sees the rule fire and calls `switch_on(row, rule, start)`; from then on its
mask is also `pos >= start` (`start`: the first position the engine computes after the firing
step). A feature none of whose interventions is on is not computed.

`SteerLogitsProcessor` is a V1 logits processor used for its `update_state` only (called before
each forward pass with the persistent batch's changes): it keeps which batch row holds which
request's interventions. It changes no logits.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import nn
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor

from circuit_serve.domain.features import FeatureRef, Intervention, Op
from circuit_serve.monitoring.logits import track_moves
from circuit_serve.monitoring.taps import TapBank, subclass_in_place
from circuit_serve.monitoring.wire import STEER_KEY, SteerArgs, SteerEntry


@dataclass
class _Op:
    iv: Intervention  # its `apply` is the replacement model's (the same semantics)
    positions: torch.Tensor  # (p,) long: `iv.positions` on the device
    rule: int = -1  # the steer rule (watch column index) that switches it on; -1: on from the start
    start: int | None = 0  # first position it applies at (None: its rule has not fired)

    def mask(self, pos: torch.Tensor, n_prompt: int) -> torch.Tensor:
        """`(n,)` bool: which of positions `pos (n,)` it applies at."""
        m = pos >= n_prompt if self.iv.generated else torch.zeros_like(pos, dtype=torch.bool)
        m = m | (pos < n_prompt) if self.iv.all_prompt else m | torch.isin(pos, self.positions)
        return m & (pos >= self.start) if self.start else m


@dataclass
class _Feature:
    """One feature of one request, with its interventions in request order."""

    layer: int
    index: int
    row: torch.Tensor | None  # (d,) folded encoder row (None: TopK, read from the full encoder)
    bias: float
    threshold: float
    decoder: torch.Tensor  # (n_out, d) float32
    ops: list[_Op]


@dataclass
class _RequestSteer:
    n_prompt: int
    by_layer: dict[int, list[_Feature]]

    def switch_on(self, rule: int, start: int) -> None:
        """Interventions of steer rule `rule` apply from position `start` on."""
        for features in self.by_layer.values():
            for f in features:
                for op in f.ops:
                    if op.rule == rule and op.start is None:
                        op.start = start


class SteerBank:
    """This worker's steered requests by batch row, and the deltas of the forward pass in flight."""

    def __init__(self, taps: TapBank) -> None:
        self.taps = taps
        self.device = taps.W.device
        self.rows: dict[int, _RequestSteer] = {}  # persistent batch index -> the request's interventions
        self._layout: tuple[list[int], torch.Tensor] | None = None  # (query_start, positions on the device)
        self._pending: dict[int, dict[tuple[int, int], torch.Tensor]] = {}  # out layer -> (s, e) -> (n, d)

    def request(self, args: SteerArgs) -> _RequestSteer:
        """The worker's form of a request's interventions (rows on the device, gain folded in)."""
        features: dict[tuple[int, int], _Feature] = {}
        for e in args.entries:
            f = features.get((e.layer, e.index))
            if f is None:
                f = features[(e.layer, e.index)] = self._feature(e)
            iv = Intervention(
                FeatureRef(e.layer, e.index), Op(e.op), e.value, tuple(e.positions), e.generated, e.all_prompt
            )
            positions = torch.tensor(e.positions, dtype=torch.long, device=self.device)
            f.ops.append(_Op(iv, positions, e.rule, 0 if e.rule < 0 else None))
        by_layer: dict[int, list[_Feature]] = defaultdict(list)
        for f in features.values():
            by_layer[f.layer].append(f)
        return _RequestSteer(args.n_prompt, dict(by_layer))

    def _feature(self, e: SteerEntry) -> _Feature:
        row = None  # TopK: the activation comes from the layer's full encoder row
        if not self.taps.topk:
            if e.row is None:
                raise ValueError(f"intervention on ({e.layer}, {e.index}) has no encoder row")
            row = self.taps.fold(e.layer, torch.tensor([e.row]))[0]
        decoder = torch.tensor(e.decoder, dtype=torch.float32, device=self.device)
        return _Feature(e.layer, e.index, row, e.bias, e.threshold, decoder, [])

    def switch_on(self, row: int, rule: int, start: int) -> None:
        """Batch row `row`'s steer rule `rule` fired: its interventions apply from position `start` on."""
        req = self.rows.get(row)
        if req is not None:
            req.switch_on(rule, start)

    # ---- in the forward pass ----------------------------------------------------------------------

    def begin_pass(self, positions: torch.Tensor, query_start: list[int]) -> None:
        self._layout = (query_start, positions[: query_start[-1]] if query_start else positions[:0])
        self._pending.clear()

    def end_pass(self) -> None:
        self._layout = None
        self._pending.clear()

    def on_input(self, layer: int, x_mid: torch.Tensor) -> None:
        """Layer `layer`'s transcoder input `x_mid (T, d)`: the deltas of its steered features."""
        if self._layout is None:
            return
        qs, positions = self._layout
        for i, req in self.rows.items():
            features = [
                (f, on) for f in req.by_layer.get(layer, ()) if (on := [op for op in f.ops if op.start is not None])
            ]
            if not features or i + 1 >= len(qs) or qs[i + 1] <= qs[i]:
                continue
            s, e = qs[i], qs[i + 1]
            pos = positions[s:e]  # (n,)
            x = self.taps.normalized(layer, x_mid[s:e])  # (n, d)
            kth = full = None
            if self.taps.topk:
                w_full, b_full = self.taps.enc[layer]
                full = torch.addmm(b_full, x, w_full.T)  # (n, d_tc)
                kth = full.topk(self.taps.k, dim=-1).values[:, -1]  # (n,)
            for f, ops in features:
                if full is not None:
                    pre = full[:, f.index]  # (n,)
                    a = torch.where(pre >= kth, pre.clamp(min=0), torch.zeros_like(pre))
                else:
                    pre = x @ f.row + f.bias  # (n,)
                    a = pre * (pre > f.threshold)
                new = a
                for op in ops:  # in request order, each on top of the previous
                    new = torch.where(op.mask(pos, req.n_prompt), op.iv.apply(new), new)
                delta = new - a  # (n,)
                for k in range(f.decoder.shape[0]):  # row k is written to layer + k
                    add = delta[:, None] * f.decoder[k][None, :]  # (n, d)
                    block = self._pending.setdefault(layer + k, {})
                    block[(s, e)] = block[(s, e)] + add if (s, e) in block else add

    def on_output(self, layer: int, out: torch.Tensor) -> torch.Tensor:
        """The MLP output `(T, d)` of `layer` with its steered rows' deltas added."""
        blocks = self._pending.pop(layer, None)
        if not blocks:
            return out
        out = out.clone()
        for (s, e), delta in blocks.items():
            out[s:e] += delta.to(out.dtype)
        return out


_STEERED_CLASSES: dict[type, type] = {}


def _steered_forward(self, *args, **kwargs):
    """The module's own forward, then its layer's steering deltas added to the output."""
    out = self._circuit_base.forward(self, *args, **kwargs)
    return self._circuit_steer.on_output(self._circuit_layer, out)


def _steer_output(module: nn.Module, bank: SteerBank, layer: int) -> None:
    subclass_in_place(module, _steered_forward, "Steered", _STEERED_CLASSES, _circuit_steer=bank, _circuit_layer=layer)


def install(model: nn.Module, taps: TapBank, *, model_type: str) -> SteerBank:
    """Steering on a tapped vLLM model: each layer's transcoder output module adds the deltas."""
    global _BANK
    bank = SteerBank(taps)
    after_norm = model_type == "gemma2" and taps.spec.write_point == "hook_mlp_out"
    for i, layer in enumerate(model.model.layers):
        _steer_output(layer.post_feedforward_layernorm if after_norm else layer.mlp, bank, i)
    taps.steer = bank
    _BANK = bank
    return bank


_BANK: SteerBank | None = None


class SteerLogitsProcessor(LogitsProcessor):
    """Keeps `SteerBank.rows` in step with vLLM's persistent batch (changes no logits)."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        pass

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        extra = (sampling_params.extra_args or {}).get(STEER_KEY)
        if extra is not None:
            SteerArgs.from_extra(extra)  # raises on malformed interventions

    def is_argmax_invariant(self) -> bool:
        return True  # no logits change; update_state still runs every step

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        bank = _BANK
        if batch_update is None or bank is None:
            return
        for index in batch_update.removed:
            bank.rows.pop(index, None)
        for index, params, _prompt, _output in batch_update.added:
            extra = (params.extra_args or {}).get(STEER_KEY) if params is not None else None
            if extra is None:
                bank.rows.pop(index, None)
            else:
                bank.rows[index] = bank.request(SteerArgs.from_extra(extra))
        track_moves(bank.rows, batch_update.moved)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return logits
