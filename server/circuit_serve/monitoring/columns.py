"""Where each watched feature's values live in the in-engine monitor's output table.

The taps inside vLLM's forward pass write one table per step, `(tokens, n_columns)`: for each
layer `l` a block of `capacity(l)` columns, first the server watchlist's features read at `l`
(in watchlist order), then `request_slots` columns that requests lend for features of their
own. The server and vLLM's worker both derive the layout from this one plan, so a column
number means the same feature on both sides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from circuit_serve.domain.features import FeatureRef


@dataclass(frozen=True)
class ColumnPlan:
    n_layers: int
    server: tuple[FeatureRef, ...]  # the server watchlist's features, in watchlist order
    request_slots: int  # columns per layer for features that requests add

    @cached_property
    def _counts(self) -> list[int]:
        counts = [0] * self.n_layers
        for f in self.server:
            counts[f.layer] += 1
        return counts

    @cached_property
    def _offsets(self) -> list[int]:
        offsets, at = [], 0
        for layer in range(self.n_layers):
            offsets.append(at)
            at += self.capacity(layer)
        return [*offsets, at]

    def capacity(self, layer: int) -> int:
        return self._counts[layer] + self.request_slots

    def offset(self, layer: int) -> int:
        return self._offsets[layer]

    @property
    def n_columns(self) -> int:
        return self._offsets[-1]

    @cached_property
    def server_columns(self) -> tuple[int, ...]:
        """Column of each server watchlist entry (watchlist order)."""
        seen = [0] * self.n_layers
        out = []
        for f in self.server:
            out.append(self.offset(f.layer) + seen[f.layer])
            seen[f.layer] += 1
        return tuple(out)

    def slot_column(self, layer: int, slot: int) -> int:
        """Column of request slot `slot` (0..request_slots-1) of `layer`."""
        if not 0 <= slot < self.request_slots:
            raise IndexError(f"slot {slot} outside 0..{self.request_slots - 1}")
        return self.offset(layer) + self._counts[layer] + slot

    def to_json(self) -> dict:
        return {
            "n_layers": self.n_layers,
            "server": [[f.layer, f.index] for f in self.server],
            "request_slots": self.request_slots,
        }

    @classmethod
    def from_json(cls, data: dict) -> ColumnPlan:
        return cls(
            int(data["n_layers"]),
            tuple(FeatureRef(int(a), int(b)) for a, b in data["server"]),
            int(data["request_slots"]),
        )


class SlotPool:
    """Request slots of each layer, shared by reference count: requests that watch the same
    feature share its column. Owned by the server (one event loop; not thread-safe)."""

    def __init__(self, plan: ColumnPlan) -> None:
        self.plan = plan
        self._free = [list(range(plan.request_slots - 1, -1, -1)) for _ in range(plan.n_layers)]
        self._held: dict[FeatureRef, tuple[int, int]] = {}  # feature -> (column, references)

    def can_take(self, features: Sequence[FeatureRef]) -> bool:
        need = [0] * self.plan.n_layers
        for f in set(features):
            if f not in self._held:
                need[f.layer] += 1
        return all(need[layer] <= len(self._free[layer]) for layer in range(self.plan.n_layers))

    def take(self, feature: FeatureRef) -> int:
        """The column lent to `feature` (the same column while anyone holds it)."""
        if feature in self._held:
            column, refs = self._held[feature]
            self._held[feature] = (column, refs + 1)
            return column
        free = self._free[feature.layer]
        if not free:
            raise LookupError(f"no free monitor slot at layer {feature.layer}")
        column = self.plan.slot_column(feature.layer, free.pop())
        self._held[feature] = (column, 1)
        return column

    def give_back(self, feature: FeatureRef) -> None:
        column, refs = self._held[feature]
        if refs > 1:
            self._held[feature] = (column, refs - 1)
            return
        del self._held[feature]
        self._free[feature.layer].append(column - self.plan.slot_column(feature.layer, 0))
