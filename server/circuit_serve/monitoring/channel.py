"""The server's end of the worker -> server side channel (see `wire`): values by request.

One zmq PULL socket, bound by the server on an ipc path before vLLM starts; one reader task
routes each request's `StepValues` to its `RequestValues`. A request's values arrive in position
order (the engine computes a request's positions in order) and before vLLM's output of the same
step, which travels on vLLM's own socket; `RequestValues.wait_for` covers the rare reordering.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import uuid
from pathlib import Path

import numpy as np

from circuit_serve.monitoring.wire import StepValues, decode_step

log = logging.getLogger(__name__)


class RequestValues:
    """Pre-activations and active masks of one request's columns at positions 0..covered-1.

    Steps are kept as the views the decoder made of each message (no copy per step); the
    `(positions, k)` arrays are assembled when read."""

    def __init__(self, n_columns: int) -> None:
        self.n_columns = n_columns
        self._steps: list[StepValues] = []
        self._pre = np.zeros((0, n_columns), dtype=np.float32)  # assembled (covered, k)
        self._active = np.zeros((0, n_columns), dtype=bool)
        self.covered = 0  # positions 0..covered-1 have values
        self.fired: tuple[int, int] | None = None  # (column index, position) of the first stop firing
        self.steered: dict[int, int] = {}  # column index of a steer rule -> first position it steered
        self.engine_from: int | None = None  # first position the engine computed (vLLM's cached tokens)
        self._changed = asyncio.Event()

    def preset(self, pre: np.ndarray, active: np.ndarray) -> None:
        """Values of positions 0..len-1 known before the engine runs (stored cached blocks)."""
        self._pre, self._active = pre, active
        self.covered = max(self.covered, len(pre))

    def add(self, step: StepValues) -> None:
        if self.engine_from is None:
            self.engine_from = step.first_pos
        self._steps.append(step)
        if step.first_pos <= self.covered:
            self.covered = max(self.covered, step.first_pos + step.pre.shape[0])
        if step.fired is not None and self.fired is None:
            self.fired = step.fired
        for column, start in step.steered:
            self.steered.setdefault(column, start)
        self._changed.set()

    def _assemble(self) -> None:
        if not self._steps:
            return
        end = max(self.covered, max(s.first_pos + s.pre.shape[0] for s in self._steps))
        pre = np.zeros((end, self.n_columns), dtype=np.float32)
        active = np.zeros((end, self.n_columns), dtype=bool)
        pre[: len(self._pre)], active[: len(self._active)] = self._pre, self._active
        for s in self._steps:
            pre[s.first_pos : s.first_pos + s.pre.shape[0]] = s.pre
            active[s.first_pos : s.first_pos + s.pre.shape[0]] = s.active
        self._pre, self._active, self._steps = pre, active, []

    @property
    def pre(self) -> np.ndarray:
        """`(positions, k)` pre-activations (rows past `covered` are not final)."""
        self._assemble()
        return self._pre

    @property
    def active(self) -> np.ndarray:
        """`(positions, k)` active masks (rows past `covered` are not final)."""
        self._assemble()
        return self._active

    def activations(self, start: int, stop: int) -> np.ndarray:
        """`(stop - start, k)` activations (pre-activation where active, else 0)."""
        return np.where(self.active[start:stop], self.pre[start:stop], np.float32(0))

    async def wait_for(self, n_positions: int, timeout_s: float) -> bool:
        """Wait until positions 0..n_positions-1 have values; False on timeout."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self.covered < n_positions:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        return True


class ValueChannel:
    def __init__(self, directory: Path | None = None) -> None:
        directory = directory or Path(tempfile.gettempdir())
        self.endpoint = f"ipc://{directory}/circuit-monitor-{uuid.uuid4().hex[:12]}.sock"
        self._requests: dict[str, RequestValues] = {}
        self._socket = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        import zmq
        import zmq.asyncio

        self._socket = zmq.asyncio.Context.instance().socket(zmq.PULL)
        self._socket.setsockopt(zmq.RCVHWM, 0)
        self._socket.bind(self.endpoint)
        self._task = asyncio.create_task(self._read(), name="circuit-monitor-values")

    def open(self, rid: str, n_columns: int) -> RequestValues:
        values = RequestValues(n_columns)
        self._requests[rid] = values
        return values

    def close(self, rid: str) -> None:
        self._requests.pop(rid, None)

    async def _read(self) -> None:
        assert self._socket is not None
        while True:
            message = await self._socket.recv()
            try:
                steps = decode_step(message)
            except Exception:  # a malformed message must not stop the reader
                log.exception("malformed monitor message from the engine")
                continue
            for step in steps:
                values = self._requests.get(step.rid)
                if values is not None:  # finished or aborted requests' late values are dropped
                    values.add(step)

    def shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
        path = self.endpoint.removeprefix("ipc://")
        with contextlib.suppress(OSError):
            Path(path).unlink()
