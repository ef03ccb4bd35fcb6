"""Plain data of transcoder features: references, watchlist rules, watches and reports (no protobuf, no torch)."""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

from circuit_serve.domain.errors import InvalidRequest
from circuit_serve.domain.input_checks import check_count


@dataclass(frozen=True, order=True)
class FeatureRef:
    """One transcoder feature: the layer it is read at and its index in that layer."""

    layer: int
    index: int

    def __str__(self) -> str:
        return f"{self.layer}:{self.index}"


@dataclass(frozen=True)
class TranscoderShape:
    """What a feature reference is validated against."""

    n_layers: int
    d_transcoder: int  # features per layer

    def check(self, feature: FeatureRef, *, where: str) -> str | None:
        """None when `feature` exists, else a message naming `where` and the allowed range."""
        if not 0 <= feature.layer < self.n_layers:
            return f"{where}: layer {feature.layer} does not exist; layers are 0..{self.n_layers - 1}"
        if not 0 <= feature.index < self.d_transcoder:
            return f"{where}: index {feature.index} does not exist; each layer has features 0..{self.d_transcoder - 1}"
        return None


class Action(enum.StrEnum):
    RECORD = "record"  # metrics and the report only
    FLAG = "flag"  # also mark the response as flagged
    STOP = "stop"  # also end the generation at the firing token
    STEER = "steer"  # also apply the rule's interventions from the next computed position on (a request's rule)


class Op(enum.StrEnum):
    SET = "set"
    SCALE = "scale"
    ADD = "add"


@dataclass(frozen=True)
class Intervention:
    """A steering intervention on feature f = (layer, index): its activation a becomes a'
    (set: a' = value; scale: a' = a * value; add: a' = a + value) at the listed prompt positions,
    every prompt position, and/or every generated token (see circuit_serve.features.steering)."""

    feature: FeatureRef
    op: Op
    value: float
    positions: tuple[int, ...] = ()  # prompt positions (0-based, BOS included)
    generated: bool = False  # also at every generated token, as it is fed back
    all_prompt: bool = False  # at every prompt position (`positions` is then ignored)

    def apply(self, a):
        """`a'` of activations `a` (a tensor of any shape)."""
        if self.op is Op.SET:
            return a.new_full(a.shape, self.value)
        if self.op is Op.SCALE:
            return a * self.value
        return a + self.value


# Far beyond any feature activation; larger values overflow float32 in the residual stream (NaN logits).
MAX_INTERVENTION_VALUE = 1e4


def check_intervention_limits(
    interventions: Sequence[Intervention], *, max_count: int, max_positions: int, field: str = "interventions"
) -> None:
    """InvalidRequest naming the field when a request has more interventions, or an intervention
    more listed positions, than the server allows (--max-interventions, --max-intervention-positions)."""
    if len(interventions) > max_count:
        raise InvalidRequest(f"has {len(interventions)} entries; the limit is {max_count}", field=field)
    for i, iv in enumerate(interventions):
        check_count(iv.positions, max_positions, field=f"{field}[{i}].positions", what="positions")


def check_interventions(
    interventions: Sequence[Intervention], n_prompt: int, shape: TranscoderShape, *, field: str = "interventions"
) -> None:
    """InvalidRequest naming the intervention and field (`field[i]...`) for anything that cannot be applied."""
    if not interventions:
        raise InvalidRequest("give at least one intervention", field=field)
    for i, iv in enumerate(interventions):
        where = f"{field}[{i}]"
        if (problem := shape.check(iv.feature, where=f"{where}.feature")) is not None:
            raise InvalidRequest(problem)
        if not math.isfinite(iv.value) or abs(iv.value) > MAX_INTERVENTION_VALUE:
            raise InvalidRequest(
                f"is {iv.value}; must be a finite number within +-{MAX_INTERVENTION_VALUE:g}", field=f"{where}.value"
            )
        if not iv.positions and not iv.generated and not iv.all_prompt:
            raise InvalidRequest(
                "set positions (prompt positions), all_prompt_positions and/or generated (every generated token)",
                field=f"{where}.positions",
            )
        for p in iv.positions:
            if not 0 <= p < n_prompt:
                raise InvalidRequest(
                    f"position {p} is beyond the prompt ({n_prompt} tokens, positions 0..{n_prompt - 1}); "
                    "use generated to intervene on generated tokens",
                    field=f"{where}.positions",
                )


@dataclass(frozen=True)
class WatchedFeature:
    name: str
    feature: FeatureRef
    threshold: float  # fires where activation > threshold
    action: Action
    label: str = ""  # from the labels file, when it has one
    steer: tuple[Intervention, ...] = ()  # action steer: applied at positions after the first firing
    steer_preset: str = ""  # action steer: a preset of the server's whose interventions come first


def check_steer_rules(rules: Sequence[WatchedFeature], *, field: str = "watch") -> None:
    """InvalidRequest naming `field[i].steer` when a `steer` rule has no interventions or another
    rule has some (the interventions themselves are checked with the request's, see the monitor)."""
    for i, w in enumerate(rules):
        if w.action is Action.STEER and not w.steer:
            raise InvalidRequest(
                "a rule with action steer needs at least one intervention to apply when it fires",
                field=f"{field}[{i}].steer",
            )
        if w.action is not Action.STEER and w.steer:
            raise InvalidRequest(
                f"only rules with action steer apply interventions; this rule's action is {w.action.value}",
                field=f"{field}[{i}].steer",
            )


@dataclass(frozen=True)
class FeatureReport:
    """One watched feature over one monitored request."""

    watched: WatchedFeature
    max_activation: float  # over prompt and completion positions
    prompt_positions: tuple[int, ...]  # prompt positions above threshold
    completion_positions: tuple[int, ...]  # completion positions (0 = first generated token) above threshold
    steered_from: int | None = None  # steer rules: first position (prompt + completion) its interventions applied at

    @property
    def fired(self) -> bool:
        return bool(self.prompt_positions or self.completion_positions)


@dataclass(frozen=True)
class MonitorReport:
    features: tuple[FeatureReport, ...]
    stopped_by: str | None = None  # name of the `stop` feature that ended the generation

    @property
    def flagged(self) -> bool:
        """A `flag` or `stop` feature fired."""
        return any(r.fired and r.watched.action in (Action.FLAG, Action.STOP) for r in self.features)


@dataclass(frozen=True)
class MonitorAsk:
    """What a generation request asks of monitoring, before the server checks it."""

    monitor: bool = False  # the server watchlist
    rules: tuple[WatchedFeature, ...] = ()  # the request's own watched features and rules
    values: bool = False  # per-position values in stream deltas

    @property
    def any(self) -> bool:
        return self.monitor or bool(self.rules)


@dataclass(frozen=True)
class WatchRequest:
    """How one generation request is monitored (checked against the loaded transcoders)."""

    features: tuple[WatchedFeature, ...]  # the server watchlist's, then the request's own
    n_server: int  # how many leading entries are the server watchlist's (they have metric series)
    values: bool = False  # per-position values in stream deltas


@dataclass(frozen=True)
class WatchedValues:
    """Activations of a request's watched features at one position of prompt + completion."""

    position: int
    values: tuple[float, ...]  # WatchRequest.features order; 0 where not active
