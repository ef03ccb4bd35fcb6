"""Feature interventions as the client gives them (`Steer`, and `Generate` / `GenerateStream`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from circuit_proto.v1 import features_pb2 as pb

Op = Literal["set", "scale", "add"]
_OPS = {"set": pb.INTERVENTION_OP_SET, "scale": pb.INTERVENTION_OP_SCALE, "add": pb.INTERVENTION_OP_ADD}


@dataclass(frozen=True)
class Intervention:
    """On feature (layer, index): `set` to value, `scale` by value, or `add` value; at prompt
    `positions` (BOS is position 0) or every prompt position, and/or at every generated token."""

    layer: int
    index: int
    op: Op
    value: float
    positions: tuple[int, ...] = ()
    generated_tokens: bool = False
    all_prompt_positions: bool = False

    @classmethod
    def parse(cls, spec: str) -> Intervention:
        """`L:I:OP:VALUE[@WHERE]`; WHERE is a comma list of prompt positions, `prompt` (all of them)
        and `gen` (every generated token); without it: everywhere (`prompt,gen`).
        E.g. `2:17:set:0`, `2:17:set:0@3,4`, `1:5:scale:3@gen`."""
        body, _, where = spec.partition("@")
        parts = [p for p in (where or "prompt,gen").split(",") if p]
        try:
            layer, index, op, value = body.split(":")
            if op.lower() not in _OPS:
                raise ValueError
            positions = tuple(int(p) for p in parts if p not in ("gen", "prompt"))
            return cls(
                int(layer),
                int(index),
                op.lower(),
                float(value),
                positions,  # type: ignore[arg-type]
                generated_tokens="gen" in parts,
                all_prompt_positions="prompt" in parts,
            )
        except ValueError:
            raise ValueError(
                f"expected L:I:OP:VALUE[@P,P,..|@prompt|@gen] with OP set, scale or add; got {spec!r}"
            ) from None


def interventions_pb(interventions: Sequence[Intervention]) -> list[pb.Intervention]:
    return [
        pb.Intervention(
            feature=pb.FeatureRef(layer=iv.layer, index=iv.index),
            op=_OPS[iv.op],
            value=iv.value,
            positions=iv.positions,
            generated_tokens=iv.generated_tokens,
            all_prompt_positions=iv.all_prompt_positions,
        )
        for iv in interventions
    ]


def interventions_from_pb(items) -> tuple[Intervention, ...]:
    """circuit.v1.Intervention messages (a preset's, in ModelInfo) -> Intervention."""
    ops = {code: name for name, code in _OPS.items()}
    return tuple(
        Intervention(
            iv.feature.layer,
            iv.feature.index,
            ops[iv.op],  # type: ignore[arg-type]
            iv.value,
            tuple(iv.positions),
            iv.generated_tokens,
            iv.all_prompt_positions,
        )
        for iv in items
    )
