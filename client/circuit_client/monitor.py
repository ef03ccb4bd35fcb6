"""Monitoring of generations, as plain objects: what a request asks (`Monitoring`, `WatchRule`)
and what comes back (`Generation.monitor`, the last `StreamChunk.monitor`, `StreamChunk.activations`).

    client.generate(prompt, sampling, monitor=True)          # the server's watchlist
    client.stream(prompt, sampling, monitor=Monitoring(      # the watchlist, two rules of this request,
        rules=(WatchRule("cant-answer", layer=3, index=120, threshold=2.5, action="stop"),),
        values=True))                                        # and per-position values in the chunks
    client.generate(prompt, sampling, monitor=Monitoring(    # boost a feature from the token after
        rules=(WatchRule("unsure", layer=3, index=120, threshold=2.5, action="steer",   # it fires on
                         steer=(Intervention.parse("3:120:add:4@gen"),)),)))
"""

from __future__ import annotations

from dataclasses import dataclass

from circuit_client.interventions import Intervention


@dataclass(frozen=True)
class WatchRule:
    """A feature this request watches besides the server's watchlist, and its rule."""

    name: str  # unique; not a name of the server's watchlist
    layer: int
    index: int
    threshold: float  # fires where the activation is above this
    action: str = "record"  # record | flag | stop | steer
    steer: tuple[Intervention, ...] = ()  # action steer: applied from the position after the first firing
    steer_preset: str = ""  # action steer: a server preset whose interventions apply (before `steer`'s)


@dataclass(frozen=True)
class Monitoring:
    rules: tuple[WatchRule, ...] = ()
    values: bool = False  # stream chunks carry the watched features' activations per position


@dataclass(frozen=True)
class WatchedValues:
    position: int  # in prompt + completion (the first generated token is at the prompt's length)
    values: tuple[float, ...]  # one per watched feature, in MonitorReport order; 0 where not active


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
    steered_from: int | None = None  # steer rules: first position (prompt + completion) it steered


@dataclass(frozen=True)
class MonitorReport:
    features: tuple[WatchedFeature, ...]
    flagged: bool  # a flag or stop feature fired
    stopped_by: str | None  # the stop feature that ended the generation

    def summary(self) -> str:
        """A few lines for a terminal."""
        head = "monitor: " + (
            "STOPPED by " + self.stopped_by if self.stopped_by else "FLAGGED" if self.flagged else "ok"
        )
        lines = [head]
        for f in self.features:
            where = ",".join(map(str, f.completion_positions)) or "-"
            label = f" ({f.label})" if f.label else ""
            lines.append(
                f"  {'*' if f.fired else ' '} {f.name}{label} [{f.layer}:{f.index} {f.action} > "
                f"{f.threshold:g}] max={f.max_activation:.3f} completion positions: {where}"
                + (f"; steered from position {f.steered_from}" if f.steered_from is not None else "")
            )
        return "\n".join(lines)


def from_pb(msg) -> MonitorReport:
    """circuit.v1.MonitorReport -> MonitorReport."""
    return MonitorReport(
        features=tuple(
            WatchedFeature(
                f.name,
                f.layer,
                f.index,
                f.label,
                f.threshold,
                f.action,
                f.max_activation,
                tuple(f.completion_positions),
                tuple(f.prompt_positions),
                f.fired,
                f.steered_from if f.HasField("steered_from") else None,
            )
            for f in msg.features
        ),
        flagged=msg.flagged,
        stopped_by=msg.stopped_by or None,
    )
