"""The monitor's logits processor: per-request rules and read-back, in vLLM's worker process.

vLLM (V1 model runner) calls it for every engine step, after the forward pass and before
sampling, with the logits of every request in the persistent batch (row i = batch index i, the
same order as the forward pass's requests). For each monitored request (its watch travels in
`SamplingParams.extra_args`, see `wire`):

1. read its block of the taps' table: rows `query_start[i]:query_start[i+1]` (the tokens the
   step computed for it: a prompt chunk, or the last sampled token), its columns;
2. zero the activations at position 0 (BOS), as the attribution engine does;
3. `stop` rules: the first position where a stop column is active marks the request fired;
   from then on its logits allow only the sentinel token (a stop token of the request), so the
   token sampled in this step, the one after the firing token, ends the request and is never
   shown (the server drops it). Rows of ignore_eos requests with stop rules never sample the
   sentinel otherwise;
4. `steer` rules: the first step in which a steer column is above its threshold switches the
   rule's interventions on in the steering bank (`steer`) from the first position the engine
   computes for the request after this step, `first_pos + n` (on decode: the firing position + 1;
   in a prefill chunk: the position after the chunk, the chunk's layers being computed already);
5. push every monitored request's values (and a new firing) to the server in one message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from circuit_serve.monitoring import taps
from circuit_serve.monitoring.wire import EXTRA_KEY, RequestWatchArgs, encode_blocks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Rules:
    """Columns and stop rules, shared by every request that watches the same features the same way."""

    columns: np.ndarray  # (k,) global table columns
    stop: np.ndarray  # (s,) indices into columns
    stop_thresholds: np.ndarray  # (s,) float32
    steer: np.ndarray  # (t,) indices into columns
    steer_thresholds: np.ndarray  # (t,) float32


@dataclass
class _Watch:
    rid: str
    rules: _Rules
    sentinel: int
    ban_sentinel: bool
    fired: tuple[int, int] | None = None  # (column index, position) of the first stop firing
    steered: set[int] = field(default_factory=set)  # column indices of steer rules switched on


class MonitorLogitsProcessor(LogitsProcessor):
    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        self._rows: dict[int, _Watch] = {}
        self._rules: dict[tuple, _Rules] = {}  # interned, so requests with the same rules are batched
        self._socket = None
        self._logit_rules: _LogitRules | None = None  # what _rules_on_logits writes; None: to be planned

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        extra = (sampling_params.extra_args or {}).get(EXTRA_KEY)
        if extra is not None:
            RequestWatchArgs.from_extra(extra)  # raises on a malformed watch

    def is_argmax_invariant(self) -> bool:
        return False  # it forces tokens

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is not None:
            self._update(batch_update)
        bank = taps.current_bank()
        if bank is not None:
            bank.enabled = bool(self._rows)  # the taps run only while someone is monitored

    def _update(self, batch_update: BatchUpdate) -> None:
        self._logit_rules = None
        for index in batch_update.removed:
            self._rows.pop(index, None)
        for index, params, _prompt, _output in batch_update.added:
            extra = (params.extra_args or {}).get(EXTRA_KEY) if params is not None else None
            if extra is None:
                self._rows.pop(index, None)
                continue
            args = RequestWatchArgs.from_extra(extra)
            key = (
                tuple(args.columns),
                tuple(args.stop),
                tuple(args.stop_thresholds),
                args.steer,
                args.steer_thresholds,
            )
            rules = self._rules.get(key)
            if rules is None:
                if len(self._rules) > 4096:  # bounded: rules of finished requests are dropped wholesale
                    self._rules.clear()
                rules = self._rules[key] = _Rules(
                    np.asarray(args.columns, dtype=np.int64),
                    np.asarray(args.stop, dtype=np.int64),
                    np.asarray(args.stop_thresholds, dtype=np.float32),
                    np.asarray(args.steer, dtype=np.int64),
                    np.asarray(args.steer_thresholds, dtype=np.float32),
                )
            self._rows[index] = _Watch(args.rid, rules, args.sentinel, args.ban_sentinel, args.fired)
            bank = taps.current_bank()
            for s in args.sets:  # columns lent to the request's own features, before its first forward pass
                bank.set_column(s.column, s.layer, s.index, s.row, s.bias, s.threshold)
        track_moves(self._rows, batch_update.moved)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        bank = taps.current_bank()
        if bank is None or not self._rows or bank.num_tokens == 0:
            return logits
        positions, pre, active = bank.read()
        pos, pre_np, act_np = positions.numpy(), pre.numpy(), active.numpy()
        qs = bank.query_start
        groups: dict[int, list[int]] = {}  # requests with the same rules, read in one gather
        for i, w in self._rows.items():
            if i + 1 < len(qs) and qs[i + 1] > qs[i]:
                groups.setdefault(id(w.rules), []).append(i)
        header: list[list] = []
        pre_blocks, act_blocks = [], []
        for members in groups.values():
            rules = self._rows[members[0]].rules
            counts = [qs[i + 1] - qs[i] for i in members]
            starts = np.fromiter((qs[i] for i in members), dtype=np.int64, count=len(members))
            rows = starts if max(counts) == 1 else np.concatenate([np.arange(qs[i], qs[i + 1]) for i in members])
            block_pre = pre_np.take(rows, 0).take(rules.columns, 1)  # (R, k)
            block_act = act_np.take(rows, 0).take(rules.columns, 1)  # (R, k)
            block_act &= (pos.take(rows) != 0)[:, None]  # BOS: no features
            hits = _above(block_pre, block_act, rules.stop, rules.stop_thresholds)  # (R, s)
            row_hit = None if hits is None else hits.any(axis=1)  # (R,)
            steer_hit = _above(block_pre, block_act, rules.steer, rules.steer_thresholds)  # (R, t)
            first = pos.take(starts).tolist()
            pre_blocks.append(block_pre)
            act_blocks.append(block_act)
            if row_hit is None and steer_hit is None:  # the common step: nothing fired, nothing switched
                k = len(rules.columns)
                header.extend([self._rows[i].rid, f, n, k, -1, -1, []] for i, f, n in zip(members, first, counts))
                continue
            at = 0
            for j, i in enumerate(members):
                w, n = self._rows[i], counts[j]
                fired = (-1, -1)
                if row_hit is not None and w.fired is None and row_hit[at : at + n].any():
                    r = int(row_hit[at : at + n].nonzero()[0][0])
                    column = int(rules.stop[int(hits[at + r].nonzero()[0][0])])
                    w.fired = fired = (column, first[j] + r)
                    self._logit_rules = None
                switched: list[list[int]] = []
                if steer_hit is not None:
                    for t in steer_hit[at : at + n].any(axis=0).nonzero()[0].tolist():
                        column = int(rules.steer[t])
                        if column not in w.steered:  # its first firing: on from the next computed position
                            w.steered.add(column)
                            switched.append([column, first[j] + n])
                            bank.steer.switch_on(i, column, first[j] + n)
                header.append([w.rid, first[j], n, len(rules.columns), *fired, switched])
                at += n
        self._rules_on_logits(logits)
        if header:
            self._send(bank.spec.endpoint, encode_blocks(header, pre_blocks, act_blocks))
        return logits

    def _rules_on_logits(self, logits: torch.Tensor) -> None:
        """Fired rows sample only their sentinel (this step's token ends them); ignore_eos rows with
        stop rules never sample it otherwise (one indexed write for all of them, planned once per
        batch change or firing, not every step)."""
        plan = self._logit_rules
        if plan is None or plan.n_rows != logits.shape[0]:
            plan = self._logit_rules = _LogitRules.of(self._rows, logits.shape[0], logits.device)
        for i, sentinel in plan.fired:
            logits[i] = float("-inf")
            logits[i, sentinel] = 0.0
        if plan.ban is not None:
            logits.index_put_(plan.ban, plan.neg_inf)

    def _send(self, endpoint: str, message: bytes) -> None:
        if self._socket is None:
            import zmq

            self._socket = zmq.Context.instance().socket(zmq.PUSH)
            self._socket.setsockopt(zmq.SNDHWM, 0)  # never drop a step's values
            self._socket.setsockopt(zmq.LINGER, 1000)
            self._socket.connect(endpoint)
        # Copied into zmq's own frame: a step's few KB go faster so than zero-copy, whose frames
        # carry a release callback each (20 us less a step, 35 against 55, 16 requests x 32 columns).
        self._socket.send(message, copy=True)


@dataclass(frozen=True)
class _LogitRules:
    """The logits writes of a batch: fired rows `(row, sentinel)`, and the (rows, sentinels) index
    of the ignore_eos rows whose sentinel is banned (None: none), written `neg_inf`."""

    n_rows: int
    fired: list[tuple[int, int]]
    ban: tuple[torch.Tensor, torch.Tensor] | None
    neg_inf: torch.Tensor

    @classmethod
    def of(cls, rows: dict[int, _Watch], n_rows: int, device: torch.device) -> _LogitRules:
        fired = [(i, w.sentinel) for i, w in rows.items() if i < n_rows and w.fired is not None]
        banned = [(i, w.sentinel) for i, w in rows.items() if i < n_rows and w.fired is None and w.ban_sentinel]
        ban = None
        if banned:
            ban = (
                torch.tensor([i for i, _ in banned], device=device),
                torch.tensor([c for _, c in banned], device=device),
            )
        return cls(n_rows, fired, ban, torch.tensor(float("-inf"), device=device))


def _above(pre: np.ndarray, active: np.ndarray, cols: np.ndarray, thresholds: np.ndarray) -> np.ndarray | None:
    """`(R, c)`: where the activations of columns `cols` of a block (`pre`, `active` `(R, k)`) are
    above their rules' `thresholds`; None when they are nowhere (or there are no such rules)."""
    if not cols.size:
        return None
    hits = np.where(active[:, cols], pre[:, cols], np.float32(0)) > thresholds
    return hits if hits.any() else None


def track_moves(rows: dict, moved) -> None:
    """Apply a batch update's moves (`(a, b, direction)`: a -> b, or a swap) to `rows` (batch index -> state)."""
    for a, b, direction in moved:
        wa, wb = rows.pop(a, None), rows.pop(b, None)
        if wa is not None:
            rows[b] = wa
        if direction == MoveDirectionality.SWAP and wb is not None:
            rows[a] = wb
