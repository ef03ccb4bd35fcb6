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
import socket
from dataclasses import dataclass, field

import numpy as np
import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from circuit_serve.monitoring import taps
from circuit_serve.monitoring.wire import EXTRA_KEY, RequestWatchArgs, encode_step

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
    key: int  # the request's key in the value channel
    rules: _Rules
    sentinel: int
    ban_sentinel: bool
    fired: tuple[int, int] | None = None  # (column index, position) of the first stop firing
    steered: set[int] = field(default_factory=set)  # column indices of steer rules switched on


class MonitorLogitsProcessor(LogitsProcessor):
    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        self._rows: dict[int, _Watch] = {}
        self._rules: dict[tuple, _Rules] = {}  # interned, so requests with the same rules are batched
        self._socket: socket.socket | None = None
        # (batch rows, fired rows' (row, sentinel), banned rows' (2, b) index): None when the
        # batch or a firing changed it since the last step
        self._forced: tuple[int, list[tuple[int, int]], torch.Tensor | None] | None = None

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
        self._forced = None
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
            self._rows[index] = _Watch(args.key, rules, args.sentinel, args.ban_sentinel, args.fired)
            bank = taps.current_bank()
            for s in args.sets:  # columns lent to the request's own features, before its first forward pass
                bank.set_column(s.column, s.layer, s.index, s.row, s.bias, s.threshold)
        track_moves(self._rows, batch_update.moved)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        bank = taps.current_bank()
        if bank is None or not self._rows or bank.num_tokens == 0:
            return logits
        pos, pre, act = bank.read()  # (T,), (T, C), (T, C)
        qs = bank.query_start
        groups: dict[int, list[int]] = {}  # requests with the same rules, read in one gather
        for i, w in self._rows.items():
            if i + 1 < len(qs) and qs[i + 1] > qs[i]:
                groups.setdefault(id(w.rules), []).append(i)
        headers: list[np.ndarray] = []
        switched: list[list[int]] = []  # (header row, column, first steered position)
        pre_blocks, act_blocks = [], []
        first_row = 0  # the group's first row in the step's header
        for members in groups.values():
            rules = self._rows[members[0]].rules
            starts = np.fromiter((qs[i] for i in members), dtype=np.int64, count=len(members))
            counts = np.fromiter((qs[i + 1] for i in members), dtype=np.int64, count=len(members)) - starts
            single = bool((counts == 1).all())  # decode steps: one row per request
            rows = starts if single else np.concatenate([np.arange(qs[i], qs[i + 1]) for i in members])
            block_pre = pre.take(rows, 0).take(rules.columns, 1)  # (R, k)
            block_act = act.take(rows, 0).take(rules.columns, 1)  # (R, k)
            block_act &= (pos.take(rows) != 0)[:, None]  # BOS: no features
            header = np.empty((len(members), 6), dtype=np.int64)
            header[:, 0] = [self._rows[i].key for i in members]
            header[:, 1] = pos.take(starts)
            header[:, 2] = counts
            header[:, 3] = len(rules.columns)
            header[:, 4:] = -1
            hits = _above(block_pre, block_act, rules.stop, rules.stop_thresholds)  # (R, s)
            steer_hit = _above(block_pre, block_act, rules.steer, rules.steer_thresholds)  # (R, t)
            if hits is not None or steer_hit is not None:  # a rule fired somewhere in the group
                self._fire(members, header, hits, steer_hit, rules, bank, switched, first_row)
            first_row += len(members)
            headers.append(header)
            pre_blocks.append(block_pre)
            act_blocks.append(block_act)
        self._rules_on_logits(logits)
        if headers:
            self._send(bank.spec.endpoint, encode_step(np.concatenate(headers), switched, pre_blocks, act_blocks))
        return logits

    def _fire(
        self,
        members: list[int],
        header: np.ndarray,
        hits: np.ndarray | None,
        steer_hit: np.ndarray | None,
        rules: _Rules,
        bank,
        switched: list[list[int]],
        first_row: int,
    ) -> None:
        """Note the group's firings (step 3 and 4 of the module docstring) in its `header` rows and
        `switched`, and switch steer rules on in the steering bank."""
        row_hit = None if hits is None else hits.any(axis=1)  # (R,)
        at = 0
        for j, (i, (first, n)) in enumerate(zip(members, header[:, 1:3].tolist(), strict=True)):
            w = self._rows[i]
            if row_hit is not None and w.fired is None and row_hit[at : at + n].any():
                r = int(row_hit[at : at + n].nonzero()[0][0])
                column = int(rules.stop[int(hits[at + r].nonzero()[0][0])])
                w.fired = (column, first + r)
                header[j, 4:] = w.fired
                self._forced = None
            if steer_hit is not None:
                for t in steer_hit[at : at + n].any(axis=0).nonzero()[0].tolist():
                    column = int(rules.steer[t])
                    if column not in w.steered:  # its first firing: on from the next computed position
                        w.steered.add(column)
                        switched.append([first_row + j, column, first + n])
                        bank.steer.switch_on(i, column, first + n)
            at += n

    def _rules_on_logits(self, logits: torch.Tensor) -> None:
        """Fired rows sample only their sentinel (this step's token ends them); ignore_eos rows with
        stop rules never sample it otherwise (one indexed write for all of them). Which rows are
        which changes only with the batch or a firing, so it is worked out then, not every step."""
        n = logits.shape[0]
        if self._forced is None or self._forced[0] != n:
            fired = [(i, w.sentinel) for i, w in self._rows.items() if i < n and w.fired is not None]
            banned = [(i, w.sentinel) for i, w in self._rows.items() if i < n and w.fired is None and w.ban_sentinel]
            ban = torch.tensor(banned, dtype=torch.long, device=logits.device).T if banned else None  # (2, b)
            self._forced = (n, fired, ban)
        _, fired, ban = self._forced
        for i, sentinel in fired:
            logits[i] = float("-inf")
            logits[i, sentinel] = 0.0
        if ban is not None:
            logits[ban[0], ban[1]] = float("-inf")

    def _send(self, endpoint: str, message: bytes) -> None:
        if self._socket is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)  # steps queue here while the server reads
            sock.connect(endpoint)
            self._socket = sock
        self._socket.sendall(message)  # never drops a step's values: waits while the buffer is full


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
