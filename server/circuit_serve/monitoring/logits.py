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
4. push every monitored request's values (and a new firing) to the server in one message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from circuit_serve.monitoring import taps
from circuit_serve.monitoring.wire import EXTRA_KEY, RequestWatchArgs, StepValues, encode_step

log = logging.getLogger(__name__)


@dataclass
class _Watch:
    args: RequestWatchArgs
    columns: np.ndarray  # (k,) global columns
    stop: np.ndarray  # (s,) indices into columns
    stop_thresholds: np.ndarray  # (s,) float32
    fired: tuple[int, int] | None = None


class MonitorLogitsProcessor(LogitsProcessor):
    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        self._rows: dict[int, _Watch] = {}
        self._socket = None

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        extra = (sampling_params.extra_args or {}).get(EXTRA_KEY)
        if extra is not None:
            RequestWatchArgs.from_extra(extra)  # raises on a malformed watch

    def is_argmax_invariant(self) -> bool:
        return False  # it forces tokens

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self._rows.pop(index, None)
        for index, params, _prompt, _output in batch_update.added:
            extra = (params.extra_args or {}).get(EXTRA_KEY) if params is not None else None
            if extra is None:
                self._rows.pop(index, None)
                continue
            args = RequestWatchArgs.from_extra(extra)
            self._rows[index] = _Watch(args, np.asarray(args.columns, dtype=np.int64),
                                       np.asarray(args.stop, dtype=np.int64),
                                       np.asarray(args.stop_thresholds, dtype=np.float32))
            bank = taps.current_bank()
            for s in args.sets:  # columns lent to the request's own features, before its first forward pass
                bank.set_column(s.column, s.layer, s.index, s.row, s.bias, s.threshold)
        for a, b, direction in batch_update.moved:
            wa, wb = self._rows.pop(a, None), self._rows.pop(b, None)
            if wa is not None:
                self._rows[b] = wa
            if direction == MoveDirectionality.SWAP and wb is not None:
                self._rows[a] = wb

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        bank = taps.current_bank()
        if bank is None or not self._rows:
            return logits
        positions, pre, active = bank.read()
        pos, pre_np, act_np = positions.numpy(), pre.numpy(), active.numpy()
        qs = bank.query_start
        items: list[StepValues] = []
        force, ban = [], []
        for i, w in self._rows.items():
            if i + 1 >= len(qs) or i >= logits.shape[0]:
                continue
            a, b = qs[i], qs[i + 1]
            if b > a:
                block_pre = pre_np[a:b][:, w.columns]  # (n, k)
                block_act = act_np[a:b][:, w.columns] & (pos[a:b] != 0)[:, None]  # BOS: no features
                new_fire = None
                if w.fired is None and w.stop.size:
                    value = np.where(block_act[:, w.stop], block_pre[:, w.stop], np.float32(0))  # (n, s)
                    above = value > w.stop_thresholds  # (n, s)
                    hit = above.any(axis=1).nonzero()[0]
                    if hit.size:
                        r = int(hit[0])
                        col = int(w.stop[int(above[r].nonzero()[0][0])])
                        w.fired = new_fire = (col, int(pos[a + r]))
                items.append(StepValues(w.args.rid, int(pos[a]), block_pre, block_act, new_fire))
            if w.fired is not None:
                force.append((i, w.args.sentinel))
            elif w.args.ban_sentinel:
                ban.append((i, w.args.sentinel))
        for i, token in force:
            logits[i] = float("-inf")
            logits[i, token] = 0.0
        for i, token in ban:
            logits[i, token] = float("-inf")
        if items:
            self._send(bank.spec.endpoint, items)
        return logits

    def _send(self, endpoint: str, items: list[StepValues]) -> None:
        if self._socket is None:
            import zmq

            self._socket = zmq.Context.instance().socket(zmq.PUSH)
            self._socket.setsockopt(zmq.SNDHWM, 0)  # never drop a step's values
            self._socket.setsockopt(zmq.LINGER, 1000)
            self._socket.connect(endpoint)
        self._socket.send_multipart(encode_step(items), copy=False)
