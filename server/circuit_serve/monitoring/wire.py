"""The two messages of in-engine monitoring, as plain data (both sides import this; no vLLM here).

1. Server -> worker, with the request (`SamplingParams.extra_args[EXTRA_KEY]`, msgpack-safe):
   `RequestWatchArgs`: the request's id, its columns (server watchlist columns, then columns
   lent to its own features, whose rows it carries), which of them are `stop` rules and which
   `steer` rules, the token the worker forces when a rule fires, and a firing the server already
   found on the request's cached prompt positions (the worker then forces the stop token in its
   first step).
2. Worker -> server, once per engine step over a zmq PUSH socket: for every monitored request in
   the step, its positions `first_pos .. first_pos + n - 1`, the `(n, n_cols)` pre-activations
   (float32) and active mask (uint8) of its columns, the first firing of a `stop` rule
   (column index in the request's list and position) when this step found it, and the `steer`
   rules this step switched on (column index, first steered position).
   One frame: the header's length (4 bytes, little-endian), the header (JSON, padded with spaces
   to a multiple of 4 bytes), the pre-activations (float32), the active mask (uint8); each
   request's block follows the previous one's in both arrays. (One frame, not three: a zmq send
   per frame cost 15 us a step against 6 us for one, timed alone.)
3. Server -> worker, with a steered request (`SamplingParams.extra_args[STEER_KEY]`): `SteerArgs`,
   its interventions with the rows the worker needs (encoder row, bias, threshold, decoder rows);
   an intervention of a `steer` rule names the rule (its column index) and waits for its firing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

EXTRA_KEY = "circuit_monitor"
STEER_KEY = "circuit_steer"  # SamplingParams.extra_args key of a request's interventions (`SteerArgs`)


@dataclass(frozen=True)
class ColumnSet:
    """One column a request lends to a feature of its own (rows travel with the request)."""

    column: int
    layer: int
    index: int
    row: list[float] | None  # encoder row (None for TopK sets: the worker holds the full encoder)
    bias: float
    threshold: float


@dataclass(frozen=True)
class RequestWatchArgs:
    rid: str
    columns: list[int]  # global table columns, in the request's report order
    stop: list[int]  # indices into `columns` of `stop` rules
    stop_thresholds: list[float]  # a stop rule fires where its activation is above this
    sentinel: int  # token forced when a stop rule fires (-1: no stop rules)
    ban_sentinel: bool  # ignore_eos requests: the sentinel is never sampled otherwise
    sets: list[ColumnSet]
    fired: tuple[int, int] | None = None  # a stop rule that fired on a cached prompt position (server-side)
    steer: tuple[int, ...] = ()  # indices into `columns` of `steer` rules
    steer_thresholds: tuple[float, ...] = ()  # a steer rule fires where its activation is above this

    def to_extra(self) -> dict:
        return {
            "rid": self.rid,
            "cols": self.columns,
            "stop": self.stop,
            "stop_thr": self.stop_thresholds,
            "sentinel": self.sentinel,
            "ban": self.ban_sentinel,
            "set": [[s.column, s.layer, s.index, s.row, s.bias, s.threshold] for s in self.sets],
            "fired": list(self.fired) if self.fired is not None else None,
            "steer": list(self.steer),
            "steer_thr": list(self.steer_thresholds),
        }

    @classmethod
    def from_extra(cls, data: dict) -> RequestWatchArgs:
        return cls(
            rid=str(data["rid"]),
            columns=[int(c) for c in data["cols"]],
            stop=[int(s) for s in data["stop"]],
            stop_thresholds=[float(t) for t in data["stop_thr"]],
            sentinel=int(data["sentinel"]),
            ban_sentinel=bool(data["ban"]),
            sets=[
                ColumnSet(int(c), int(layer), int(i), row, float(b), float(t)) for c, layer, i, row, b, t in data["set"]
            ],
            fired=None if data.get("fired") is None else (int(data["fired"][0]), int(data["fired"][1])),
            steer=tuple(int(c) for c in data.get("steer", ())),
            steer_thresholds=tuple(float(t) for t in data.get("steer_thr", ())),
        )


@dataclass(frozen=True)
class SteerEntry:
    """One intervention as the worker applies it: where, what, and the feature's own rows."""

    layer: int
    index: int
    op: str  # set | scale | add
    value: float
    positions: list[int]  # prompt positions
    all_prompt: bool
    generated: bool
    row: list[float] | None  # encoder row, unfolded (None for TopK sets: the worker holds the full encoder)
    bias: float
    threshold: float  # JumpReLU threshold (0 otherwise)
    decoder: list[list[float]]  # (n_out, d): rows written to layers layer, layer + 1, ... (1 row for a PLT)
    rule: int = -1  # index into the request's watch columns of the steer rule that switches it on (-1: always on)

    def to_wire(self) -> list:
        return [
            self.layer,
            self.index,
            self.op,
            self.value,
            self.positions,
            self.all_prompt,
            self.generated,
            self.row,
            self.bias,
            self.threshold,
            self.decoder,
            self.rule,
        ]

    @classmethod
    def from_wire(cls, data: list) -> SteerEntry:
        layer, index, op, value, positions, all_prompt, generated, row, bias, threshold, decoder, rule = data
        if op not in ("set", "scale", "add"):
            raise ValueError(f"unknown intervention op {op!r}")
        return cls(
            int(layer),
            int(index),
            str(op),
            float(value),
            [int(p) for p in positions],
            bool(all_prompt),
            bool(generated),
            row,
            float(bias),
            float(threshold),
            decoder,
            int(rule),
        )


@dataclass(frozen=True)
class SteerArgs:
    """A request's interventions (`SamplingParams.extra_args[STEER_KEY]`), in request order."""

    n_prompt: int  # positions >= n_prompt are generated tokens
    entries: list[SteerEntry]

    def to_extra(self) -> dict:
        return {"n_prompt": self.n_prompt, "iv": [e.to_wire() for e in self.entries]}

    @classmethod
    def from_extra(cls, data: dict) -> SteerArgs:
        return cls(int(data["n_prompt"]), [SteerEntry.from_wire(e) for e in data["iv"]])


@dataclass(frozen=True)
class StepValues:
    """One request's values from one engine step."""

    rid: str
    first_pos: int
    pre: np.ndarray  # (n, n_cols) float32
    active: np.ndarray  # (n, n_cols) bool
    fired: tuple[int, int] | None  # (index into the request's columns, position) of a first stop firing
    steered: tuple[tuple[int, int], ...] = ()  # (index into the request's columns, first steered position)


def encode_blocks(header: list[list], pre: list[np.ndarray], active: list[np.ndarray]) -> bytes:
    """The message of one step from its header rows (rid, first_pos, n, n_cols, fired column, fired
    position, [[steer column, first steered position], ...]) and blocks holding those requests' rows
    in header order (several requests per block)."""
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 4)  # the float32 array starts 4-byte aligned
    return b"".join(
        [
            len(head).to_bytes(4, "little"),
            head,
            *(np.ascontiguousarray(b, dtype=np.float32).tobytes() for b in pre),
            *(np.ascontiguousarray(b, dtype=np.uint8).tobytes() for b in active),
        ]
    )


def decode_step(message: bytes) -> list[StepValues]:
    head = 4 + int.from_bytes(message[:4], "little")  # where the arrays start
    header = json.loads(message[4:head])
    total = sum(n * n_cols for _, _, n, n_cols, *_ in header)
    pre = np.frombuffer(message, dtype=np.float32, count=total, offset=head)
    active = np.frombuffer(message, dtype=np.bool_, count=total, offset=head + 4 * total)  # 0/1 bytes
    out, at = [], 0
    for rid, first_pos, n, n_cols, fired_col, fired_pos, steered in header:
        size = n * n_cols
        out.append(
            StepValues(
                rid=rid,
                first_pos=first_pos,
                pre=pre[at : at + size].reshape(n, n_cols),
                active=active[at : at + size].reshape(n, n_cols),
                fired=None if fired_col < 0 else (fired_col, fired_pos),
                steered=tuple((int(c), int(p)) for c, p in steered),
            )
        )
        at += size
    return out
