"""Watchlist reports of monitored generations, as plain objects (`Generation.monitor`,
the last `StreamChunk.monitor`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WatchedFeature:
    name: str
    layer: int
    index: int
    label: str
    threshold: float
    action: str  # record | flag | stop
    max_activation: float  # over prompt and completion
    completion_positions: tuple[int, ...]  # above threshold; 0 = first generated token
    prompt_positions: tuple[int, ...]
    fired: bool


@dataclass(frozen=True)
class MonitorReport:
    features: tuple[WatchedFeature, ...]
    flagged: bool  # a flag or stop feature fired
    stopped_by: str | None  # the stop feature that ended the generation

    def summary(self) -> str:
        """A few lines for a terminal."""
        head = "monitor: " + ("STOPPED by " + self.stopped_by if self.stopped_by
                              else "FLAGGED" if self.flagged else "ok")
        lines = [head]
        for f in self.features:
            where = ",".join(map(str, f.completion_positions)) or "-"
            label = f" ({f.label})" if f.label else ""
            lines.append(f"  {'*' if f.fired else ' '} {f.name}{label} [{f.layer}:{f.index} {f.action} > "
                         f"{f.threshold:g}] max={f.max_activation:.3f} completion positions: {where}")
        return "\n".join(lines)


def from_pb(msg) -> MonitorReport:
    """circuit.v1.MonitorReport -> MonitorReport."""
    return MonitorReport(
        features=tuple(
            WatchedFeature(f.name, f.layer, f.index, f.label, f.threshold, f.action, f.max_activation,
                           tuple(f.completion_positions), tuple(f.prompt_positions), f.fired)
            for f in msg.features
        ),
        flagged=msg.flagged,
        stopped_by=msg.stopped_by or None,
    )
