"""Steering inside vLLM's forward pass: per-request feature interventions, in the worker process.

The same semantics as the replacement model's steering (`circuit_serve.features.steering`). A
request's interventions travel in `SamplingParams.extra_args[STEER_KEY]` (`SteerArgs`, see
`wire`); its tokens of a step are rows `s:e` of the batch (`query_start`, in the persistent
batch's order, as the taps read it). The work per layer and step is a fixed number of tensor
operations, whatever the number of steered requests, features and interventions:

0. Requests arrive (`update_state` -> `SteerBank.request`): each steered feature of layer `l`
   gets a slot of the layer's pool (`_Pool`, shared by the requests that steer the same
   feature): folded encoder row `rows (S, d)`, `bias (S,)`, `threshold (S,)`, feature `index
   (S,)` (TopK) and decoder rows `decoder (S, n_out, d)` (row `k` is written to layer `l + k`;
   `n_out` = 1 for a per-layer transcoder).
1. Before the forward pass (`begin_pass`, Python over requests and features, never tokens):
   every (request, feature) group of layer `l` with an intervention on becomes `n` pairs
   (token row, slot), and the layer's steered rows are listed once (`_Plan`; all layers in one
   table, kept while the steered rows' layout and their interventions stay the same, as they do
   from one decode step to the next; a steer rule switching on rebuilds it):

       tok    (P,)    long     # the pair's row in the batch (s .. e-1 of its request)
       slot   (P,)    long     # its feature's slot in the layer's pool
       utok   (U,)    long     # the layer's steered rows (a slice of the batch where it is one)
       uidx   (P,)    long     # the pair's row in utok
       kind   (P, M)  long     # intervention m of the feature: set / scale / add (0: padding)
       value  (P, M)  float32  # (M: the most interventions on one feature)

   and, every step, for all layers at once, from `pos = positions[tok]` and the pair's
   `n_prompt`, `start` and intervention flags:

       mask = generated & (pos >= n_prompt)
            | (pos < n_prompt            if all_prompt
               else isin(id * KEY + pos, keys id * KEY + position))    # listed positions
       mask &= (pos >= start) & (kind != 0)    (P, M)   # start: 0, or a steer rule's first position

   Once every pair is past its prompt and the starts of its interventions on generated tokens
   (`steady_from`, as decode steps are), the mask is `generated & on` at every step: the plan keeps
   it, and a layer of adds alone keeps its phase 2 result (`steady_adds`) until the plan changes.

2. At layer `l`'s tapped pre-MLP norm (`on_input`, transcoder input `x_mid (T, d)`):

       xu    = bank.normalized(l, x_mid[utok])                    (U, d) float32   # as the taps
       pre   = (xu @ rows.T)[uidx, slot] + bias[slot]            (P,)
       a     = pre * (pre > threshold[slot])                      (P,)  # ReLU (thr 0) / JumpReLU
             = pre.clamp(min=0) where pre >= kth[uidx] else 0           # TopK, with
               full = xu @ W_l.T + b_l (U, d_tc), kth = kth largest of full, pre = full[uidx, index[slot]]
       a'    = a;  for m < M: a' = where(mask[:, m], op_m(a'), a')    (P,)  # in request order
             (a layer whose interventions are all `add` skips xu, pre and a: a = 0, so a' - a is
             the values added, exactly, as the replacement model's steering computes it too)
       D     = zeros(U, S);  D[uidx, slot] = a' - a               (U, S)  # one pair per (row, slot)
       add_k = D @ decoder[:, k]                                  (U, d)  for k < n_out

   On the CPU the TopK row goes through the taps' sentinel gate (`topk_gate`; once warmed up, in
   steps of at least `MIN_TOKENS` rows): `xu @ W[sentinels + pool].T` (U, s + S) bounds the row's
   k-th largest from below, and only the rows where a pair's `pre` may reach it compute `full`
   (the other pairs' `a` is 0, exactly as the full row would give).
   `op_m` is `Intervention.apply`: set -> value, scale -> a' * value, add -> a' + value;
   `add_k` is what the MLP output of layer `l + k` gains at rows `utok` (with one feature per
   row it is `(a' - a) * decoder[slot, k]` exactly: the other products are zeros).
3. The MLP output `(T, d)` of layer `l` (Gemma-2 with hook_mlp_out: the post-feedforward norm's
   output, where the transcoder's output is read) gains the `add` of every layer that writes to
   it (`on_output`, in place: one `index_add_`, or a slice add; a CLT's several are summed in
   float32 first). Other rows are not touched; layers without steered features compute nothing, and a
   step without steered rows runs the model alone.

Masks use absolute positions: a prompt position p when listed (or every prompt position with
all_prompt), every position >= n_prompt (a generated token fed back) with generated. An
intervention of a `steer` watch rule (`SteerEntry.rule >= 0`) is off until the monitor's logits
processor sees the rule fire and calls `switch_on(row, rule, start)`; from then on its `start`
is the first position the engine computes after the firing step (phase 1 reads it every pass).
A feature none of whose interventions is on is not computed.

`SteerLogitsProcessor` is a V1 logits processor used for its `update_state` only (called before
each forward pass with the persistent batch's changes): it keeps which batch row holds which
request's interventions. It changes no logits.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate

import torch
from torch import nn
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor

from circuit_serve.domain.features import Op
from circuit_serve.monitoring import topk_gate
from circuit_serve.monitoring.logits import track_moves
from circuit_serve.monitoring.taps import TapBank, subclass_in_place
from circuit_serve.monitoring.wire import STEER_KEY, SteerArgs, SteerEntry

_KIND = {Op.SET: 1, Op.SCALE: 2, Op.ADD: 3}  # kind codes (0: padding)
_KEY = 1 << 32  # listed-position keys: intervention id * _KEY + position


@dataclass
class _Op:
    kind: int  # _KIND
    value: float
    positions: tuple[int, ...]  # listed prompt positions
    generated: bool
    all_prompt: bool
    rule: int = -1  # the steer rule (watch column index) that switches it on; -1: on from the start
    start: int | None = 0  # first position it applies at (None: its rule has not fired)


@dataclass
class _Feature:
    """One feature of one request, with its interventions in request order."""

    index: int
    slot: int  # in its layer's `_Pool`
    ops: list[_Op]


@dataclass(eq=False)  # compared by identity (a phase 1 plan's layout)
class _RequestSteer:
    n_prompt: int
    by_layer: dict[int, list[_Feature]]
    version: int = 0  # bumped when an intervention switches on (the plan is rebuilt)

    def switch_on(self, rule: int, start: int) -> None:
        """Interventions of steer rule `rule` apply from position `start` on."""
        for features in self.by_layer.values():
            for f in features:
                for op in f.ops:
                    if op.rule == rule and op.start is None:
                        op.start = start
                        self.version += 1


class _Pool:
    """One layer's steered features, stacked by slot (phase 0): a feature steered by several
    requests has one slot; slots of features no request steers any more are reused, so `S` is
    the most distinct features of the layer steered at one time."""

    def __init__(self, d: int, n_out: int, device: torch.device) -> None:
        self.slots: dict[int, int] = {}  # feature index -> slot
        self.index = torch.zeros(0, dtype=torch.long, device=device)  # (S,)
        self.rows = torch.zeros(0, d, device=device)  # (S, d) folded encoder rows (zeros for TopK)
        self.bias = torch.zeros(0, device=device)  # (S,)
        self.threshold = torch.zeros(0, device=device)  # (S,)
        self.decoder = torch.zeros(0, n_out, d, device=device)  # (S, n_out, d)
        self.gated: tuple[torch.Tensor, torch.Tensor] | None = None  # TopK gate's rows (SteerBank._topk)

    def slot(self, e: SteerEntry, row: torch.Tensor | None, live: Callable[[], set[int]]) -> int:
        """The slot of feature `e.index` (its rows written on first use); `live()`: the feature
        indices some request still steers (the others' slots are free)."""
        s = self.slots.get(e.index)
        if s is not None:
            return s
        cap = self.index.numel()
        if len(self.slots) >= cap:
            keep = live()
            self.slots = {i: s for i, s in self.slots.items() if i in keep}
        if len(self.slots) >= cap:
            grow = 1  # S stays the most features steered at once: phase 2's products are (U, S)
            self.index = torch.cat([self.index, self.index.new_zeros(grow)])
            self.rows = torch.cat([self.rows, self.rows.new_zeros(grow, self.rows.shape[1])])
            self.bias = torch.cat([self.bias, self.bias.new_zeros(grow)])
            self.threshold = torch.cat([self.threshold, self.threshold.new_zeros(grow)])
            self.decoder = torch.cat([self.decoder, self.decoder.new_zeros(grow, *self.decoder.shape[1:])])
        used = set(self.slots.values())
        s = next(i for i in range(self.index.numel()) if i not in used)
        self.slots[e.index] = s
        self.index[s] = e.index
        self.rows[s] = 0.0 if row is None else row
        self.bias[s] = float(e.bias)
        self.threshold[s] = float(e.threshold)
        self.decoder[s] = torch.tensor(e.decoder, dtype=torch.float32)
        self.gated = None
        return s


@dataclass
class _Pairs:
    """Phase 1's pairs of one layer (shapes: module docstring); all but `mask` views of a `_Plan`'s."""

    tok: torch.Tensor  # (P,) long
    slot: torch.Tensor  # (P,) long
    utok: torch.Tensor  # (U,) long
    uidx: torch.Tensor  # (P,) long, into utok
    kind: torch.Tensor  # (P, M) long
    value: torch.Tensor  # (P, M) float32
    rows: slice | None  # utok as a slice of the batch when it is one (no gather, no scatter)
    reads_a: bool  # some pair sets or scales (adds alone need no activation: phase 2)
    mask: torch.Tensor | None = None  # (P, M) bool, this step's
    steady: bool = False  # this step's mask is the plan's steady one (every pair past its prompt and starts)
    steady_adds: list[torch.Tensor] | None = None  # adds alone: phase 2's `add_k` under the steady mask


def _ranges(starts: list[int], counts: list[int], device: torch.device) -> torch.Tensor:
    """`cat(arange(s, s + n) for s, n)`, `(sum(counts),)` long."""
    total = sum(counts)
    offsets = [0, *accumulate(counts)][:-1]
    shift = torch.tensor([s - o for s, o in zip(starts, offsets, strict=True)], dtype=torch.long)
    out = torch.arange(total) + torch.repeat_interleave(shift, torch.tensor(counts), output_size=total)
    return out.to(device)


_Group = tuple[int, int, int, int, int, list[_Op]]  # layer, first row, rows, n_prompt, slot, interventions on


class _Plan:
    """Phase 1's tables for one batch layout of the steered rows, all layers in one table (kept
    while the layout and the interventions on stay the same: decode steps reuse it); only the
    masks, which read the step's positions, are computed per step (`masks`)."""

    def __init__(self, groups: list[_Group], device: torch.device) -> None:
        groups = sorted(groups, key=lambda g: g[0])  # by layer (stable: request order within)
        M = max(len(g[5]) for g in groups)
        counts = [g[2] for g in groups]
        # Each layer's steered rows once (utok), in order; pair p of a group reads utok row uidx[p].
        u_starts, u_counts, u0 = [], [], []
        first: dict[int, dict[int, int]] = {}  # layer -> a steered request's first row -> its offset in utok
        size: dict[int, int] = {}  # layer -> U
        for layer, s, n, *_ in groups:
            seen = first.setdefault(layer, {})
            if s not in seen:
                seen[s] = size.get(layer, 0)
                size[layer] = seen[s] + n
                u_starts.append(s)
                u_counts.append(n)
            u0.append(seen[s])
        # Per group: slot, n_prompt, then per intervention m: kind, start, generated, all_prompt, id.
        table, values, keys = [], [], []
        for g, (_, _, _, n_prompt, slot, ops) in enumerate(groups):
            row = [slot, n_prompt]
            for m in range(M):
                if m < len(ops):
                    op, op_id = ops[m], g * M + m
                    row += [op.kind, op.start, op.generated, op.all_prompt, op_id]
                    keys += [op_id * _KEY + q for q in op.positions if not op.all_prompt]
                else:
                    row += [0, 0, 0, 0, -1]
            table.append(row)
            values.append([float(op.value) for op in ops] + [0.0] * (M - len(ops)))
        reps = torch.tensor(counts)
        t = torch.repeat_interleave(torch.tensor(table, dtype=torch.long), reps, dim=0).to(device)  # (P, 2 + 5M)
        value = torch.repeat_interleave(torch.tensor(values, dtype=torch.float32), reps, dim=0).to(device)  # (P, M)
        self.tok = _ranges([g[1] for g in groups], counts, device)  # (P,)
        uidx = _ranges(u0, counts, device)  # (P,)
        utok = _ranges(u_starts, u_counts, device)  # (U,) all layers' steered rows
        self.n_prompt = t[:, 1:2]  # (P, 1)
        kind, self.start, generated, all_prompt, self.op_id = t[:, 2:].view(-1, M, 5).unbind(-1)  # (P, M)
        # What does not change from step to step, once: the flags as masks, and `start` where padding never applies.
        self.generated, self.all_prompt = generated != 0, all_prompt != 0
        self.start = torch.where(kind != 0, self.start, torch.iinfo(torch.long).max)
        # From this position on a pair's mask stays `generated & start <= pos`, the same every step
        # (decode steps): past its prompt and the start of each of its interventions on generated tokens.
        gen_start = torch.where(self.generated, self.start, 0).amax(1)  # (P,)
        self.steady_from = torch.maximum(self.n_prompt[:, 0], gen_start)  # (P,)
        self.steady_mask: torch.Tensor | None = None  # (P, M), once a step is steady
        self.steady_set = False  # the pairs' masks are views of steady_mask
        self.steady_pending: dict | None = None  # a steady pass's adds (SteerBank._pending), every layer adds alone
        self.keys = torch.tensor(keys, dtype=torch.long, device=device) if keys else None
        # Each layer's slices of the tables.
        self.layers: dict[int, tuple[int, int, _Pairs]] = {}
        p0 = q0 = q0_n = 0  # q0_n: the layer's first entry in u_starts
        for layer in sorted(size):
            p1 = p0 + sum(g[2] for g in groups if g[0] == layer)
            q1 = q0 + size[layer]
            rows = [(s, s + n) for s, n in zip(u_starts[q0_n:], u_counts[q0_n:], strict=False)][: len(first[layer])]
            q0_n += len(first[layer])
            joined = all(a[1] == b[0] for a, b in zip(rows, rows[1:], strict=False))
            whole = slice(rows[0][0], rows[-1][1]) if joined else None  # utok[q0:q1] == arange(whole)
            reads_a = any(op.kind != _KIND[Op.ADD] for g in groups if g[0] == layer for op in g[5])
            pairs = _Pairs(
                self.tok[p0:p1], t[p0:p1, 0], utok[q0:q1], uidx[p0:p1], kind[p0:p1], value[p0:p1], whole, reads_a
            )
            self.layers[layer] = (p0, p1, pairs)
            p0, q0 = p1, q1
        self.pairs = {layer: pairs for layer, (_, _, pairs) in self.layers.items()}  # what `masks` returns

    def masks(self, positions: torch.Tensor) -> dict[int, _Pairs]:
        """The step's masks (module docstring, phase 1) from its positions `(T,)`, for every layer at once."""
        pos = positions[self.tok]  # (P,)
        steady = bool((pos >= self.steady_from).all())
        if steady and self.steady_mask is not None:
            if not self.steady_set:  # the pairs hold the steady mask's views from the previous step on
                self._set(self.steady_mask, True)
            return self.pairs
        pos = pos[:, None]  # (P, 1)
        prompt = pos < self.n_prompt  # (P, 1)
        if self.keys is not None:
            on_prompt = torch.where(self.all_prompt, prompt, torch.isin(self.op_id * _KEY + pos, self.keys))
        else:
            on_prompt = self.all_prompt & prompt
        mask = (self.generated & ~prompt) | on_prompt
        mask &= pos >= self.start  # (P, M); padding's start is past every position
        if steady:
            self.steady_mask = mask
        self._set(mask, steady)
        return self.pairs

    def _set(self, mask: torch.Tensor, steady: bool) -> None:
        """Each layer's pairs get their rows of `mask (P, M)`."""
        for p0, p1, pairs in self.layers.values():
            pairs.mask, pairs.steady = mask[p0:p1], steady
        self.steady_set = steady


class SteerBank:
    """This worker's steered requests by batch row, and the deltas of the forward pass in flight."""

    def __init__(self, taps: TapBank) -> None:
        self.taps = taps
        self.device = taps.W.device
        self.rows: dict[int, _RequestSteer] = {}  # persistent batch index -> the request's interventions
        self.pools: dict[int, _Pool] = {}  # layer -> its steered features (phase 0)
        self._plan: tuple[tuple, _Plan | None] | None = None  # (steered rows' layout, its tables)
        self._pairs: dict[int, _Pairs] | None = None  # layer -> phase 1 (None: no pass in flight)
        self._pending: dict[int, list[tuple[_Pairs, torch.Tensor]]] = {}  # out layer -> (U, d) float32 deltas
        self._switches = 0  # steer rules switched on so far (a plan's layout holds its requests' versions)
        self._last: tuple | None = None  # the previous pass's batch layout, rows and switches
        self._repeat = False  # this pass repeats a steady pass of adds alone: phase 2 has nothing to do

    def request(self, args: SteerArgs) -> _RequestSteer:
        """The worker's form of a request's interventions (phase 0: its features' slots)."""
        features: dict[tuple[int, int], _Feature] = {}
        for e in args.entries:
            f = features.get((e.layer, e.index))
            if f is None:
                mine = {i for (layer, i) in features if layer == e.layer}
                f = features[(e.layer, e.index)] = _Feature(e.index, self._slot(e, mine), [])
            f.ops.append(
                _Op(
                    _KIND[Op(e.op)],
                    e.value,
                    tuple(e.positions),
                    e.generated,
                    e.all_prompt,
                    e.rule,
                    0 if e.rule < 0 else None,
                )
            )
        by_layer: dict[int, list[_Feature]] = defaultdict(list)
        for (layer, _), f in features.items():
            by_layer[layer].append(f)
        return _RequestSteer(args.n_prompt, dict(by_layer))

    def _slot(self, e: SteerEntry, mine: set[int]) -> int:
        row = None  # TopK: the activation comes from the layer's full encoder row
        if not self.taps.topk:
            if e.row is None:
                raise ValueError(f"intervention on ({e.layer}, {e.index}) has no encoder row")
            row = self.taps.fold(e.layer, torch.tensor([e.row]))[0]
        pool = self.pools.get(e.layer)
        if pool is None:
            pool = self.pools[e.layer] = _Pool(self.taps.W.shape[1], len(e.decoder), self.device)

        def live() -> set[int]:
            return mine | {f.index for req in self.rows.values() for f in req.by_layer.get(e.layer, ())}

        return pool.slot(e, row, live)

    def switch_on(self, row: int, rule: int, start: int) -> None:
        """Batch row `row`'s steer rule `rule` fired: its interventions apply from position `start` on."""
        req = self.rows.get(row)
        if req is not None:
            req.switch_on(rule, start)
            self._switches += 1

    # ---- in the forward pass ----------------------------------------------------------------------

    def begin_pass(self, positions: torch.Tensor, query_start: list[int]) -> None:
        """Phase 1: the pairs of every layer with steered features in this batch."""
        qs = query_start
        last, self._last = self._last, (tuple(qs), tuple(self.rows.items()), self._switches)
        plan = self._plan[1] if self._plan is not None else None
        if self._last == last and plan is not None and plan.steady_pending is not None:
            # The same rows as a steady pass of adds alone (positions only grow within a plan): its adds again.
            self._pairs, self._pending, self._repeat = plan.pairs, plan.steady_pending, True
            return
        self._pending, self._repeat = {}, False
        layout = tuple(
            (req, qs[i], qs[i + 1] - qs[i], req.version)
            for i, req in self.rows.items()
            if i + 1 < len(qs) and qs[i + 1] > qs[i]
        )
        if self._plan is None or self._plan[0] != layout:
            groups = [
                (layer, s, n, req.n_prompt, f.slot, on)
                for req, s, n, _ in layout
                for layer, features in req.by_layer.items()
                for f in features
                if (on := [op for op in f.ops if op.start is not None])
            ]
            self._plan = (layout, _Plan(groups, self.device) if groups else None)
        plan = self._plan[1]
        self._pairs = plan.masks(positions) if plan is not None else {}  # the plan's rows are all < qs[-1]

    def end_pass(self) -> None:
        plan = self._plan[1] if self._plan is not None else None
        if not self._repeat and plan is not None and plan.steady_set and plan.steady_pending is None:
            if all(p.steady_adds is not None for p in plan.pairs.values()):  # every layer adds alone
                plan.steady_pending = self._pending  # what this steady pass added, for the next ones
        self._pairs, self._pending, self._repeat = None, {}, False

    def on_input(self, layer: int, x_mid: torch.Tensor) -> None:
        """Phase 2 at layer `layer`, transcoder input `x_mid (T, d)`: its steered features' deltas."""
        p = self._pairs.get(layer) if self._pairs is not None and not self._repeat else None
        if p is None:
            return
        pool = self.pools[layer]
        if p.steady and p.steady_adds is not None:  # adds alone, as in the previous steady step
            for k, add in enumerate(p.steady_adds):
                self._pending.setdefault(layer + k, []).append((p, add))
            return
        if not p.reads_a:  # adds only: a' - a is the values on, added in order to 0 (no encoding)
            added = torch.where(p.mask[:, 0], p.value[:, 0], 0.0)  # (P,)
            for m in range(1, p.kind.shape[1]):
                added = torch.where(p.mask[:, m], added + p.value[:, m], added)
        else:
            xu = self.taps.normalized(layer, x_mid[p.utok if p.rows is None else p.rows])  # (U, d)
            if self.taps.topk:
                a = self._topk(layer, pool, p, xu)
            else:
                pre = (xu @ pool.rows.T)[p.uidx, p.slot] + pool.bias[p.slot]  # (U, S) -> (P,)
                a = pre * (pre > pool.threshold[p.slot])
            new = a
            for m in range(p.kind.shape[1]):  # in request order, each on top of the previous
                kind, value = p.kind[:, m], p.value[:, m]
                op = torch.where(
                    kind == _KIND[Op.SET], value, torch.where(kind == _KIND[Op.SCALE], new * value, new + value)
                )
                new = torch.where(p.mask[:, m], op, new)
            added = new - a
        delta = added.new_zeros(p.utok.shape[0], pool.index.numel())  # (U, S): one (token, feature) per pair
        delta[p.uidx, p.slot] = added
        adds = [delta @ pool.decoder[:, k] for k in range(pool.decoder.shape[1])]  # (U, S) @ (S, d) for layer + k
        for k, add in enumerate(adds):
            self._pending.setdefault(layer + k, []).append((p, add))
        if p.steady and not p.reads_a:  # the same every steady step of this plan (its slots stay put)
            p.steady_adds = adds

    def _topk(self, layer: int, pool: _Pool, p: _Pairs, xu: torch.Tensor) -> torch.Tensor:
        """TopK activations `(P,)` of the pairs from the steered rows' inputs `xu (U, d)`: the full
        row, or on the CPU (`topk_gate`, once its sentinels are known and the step is long enough)
        only for the rows where a steered feature may be in the top k (the others' are 0, exactly)."""
        gate = self.taps.gate
        if gate is None or not gate.ready(layer, xu.shape[0]):
            learn = gate is not None and gate.sentinels[layer] is None
            return self._topk_rows(layer, pool, p.uidx, p.slot, xu, learn=learn)
        if pool.gated is None:  # the sentinels' rows and the pool's features' rows
            pool.gated = gate.gather(layer, *self.taps.enc_t[layer], pool.index)
        # 1.-3. of topk_gate: the sentinels' k-th largest bounds the row's; rows where no pair passes it are out
        both, kth_s, tol = gate.bound(layer, xu, pool.gated)  # (U, S), (U, 1), (U, 1)
        maybe = topk_gate.may_pass(both[p.uidx, p.slot], kth_s[p.uidx, 0], tol[p.uidx, 0])  # (P,)
        rows = torch.zeros(xu.shape[0], dtype=torch.bool, device=xu.device)
        rows[p.uidx[maybe]] = True  # (U,)
        a = torch.zeros(p.uidx.shape[0], device=xu.device)
        if maybe.any():  # 4. the whole row for those rows only
            keep = rows[p.uidx]  # (P,) the pairs of those rows
            at = (rows.cumsum(0) - 1)[p.uidx[keep]]  # their row among the kept ones
            a[keep] = self._topk_rows(layer, pool, at, p.slot[keep], xu[rows], learn=False)
        return a

    def _topk_rows(self, layer, pool, uidx, slot, xu, *, learn: bool) -> torch.Tensor:
        """`(P,)`: `pre.clamp(min=0)` where `pre >= kth` of the full row `xu @ W_l.T + b_l`, else 0."""
        w_t, b_full = self.taps.enc_t[layer]
        full = torch.addmm(b_full, xu, w_t)  # (U, d_tc)
        top = full.topk(self.taps.k, dim=-1)
        if learn:  # the gate's warm-up, as the taps' (any sentinels are exact, frequent ones spare more)
            self.taps.gate.learn(layer, top.indices)
        pre = full[uidx, pool.index[slot]]  # (P,)
        return torch.where(pre >= top.values[uidx, -1], pre.clamp(min=0), torch.zeros_like(pre))

    def on_output(self, layer: int, out: torch.Tensor) -> torch.Tensor:
        """Phase 3: the MLP output `(T, d)` of `layer` with its steered rows' deltas added."""
        adds = self._pending.get(layer)
        if adds is None:
            return out
        # In place: the output is a new tensor of this forward pass, which vLLM itself adds into in place next.
        if len(adds) == 1:  # a per-layer transcoder: the deltas of this layer's features
            p, add = adds[0]
            _add_rows(out, p, add if add.dtype == out.dtype else add.to(out.dtype))
        else:  # a CLT: summed in float32 over the layers that write here, then added once
            acc = out.new_zeros(out.shape, dtype=torch.float32)
            for q, add_q in adds:
                _add_rows(acc, q, add_q)
            out += acc.to(out.dtype)
        return out


def _add_rows(out: torch.Tensor, p: _Pairs, add: torch.Tensor) -> None:
    """`out (T, d)` += `add (U, d)` at the steered rows `p.utok` (a slice add where they are contiguous)."""
    if p.rows is None:
        out.index_add_(0, p.utok, add)
    else:
        out[p.rows].add_(add)


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
