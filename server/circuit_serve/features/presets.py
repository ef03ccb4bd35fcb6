"""Steering presets (`--steering FILE`): named sets of interventions, and the default one.

The file (YAML, or JSON by `.json`) is a list of presets, or a mapping with the single key
`presets`:

    presets:
    - name: calm                 # unique; requests name it (GenerateRequest.steering_preset)
      interventions:             # each as GenerateRequest.interventions
      - {layer: 3, index: 17, op: set, value: 0, generated: true}
      - {layer: 1, index: 5, op: scale, value: 0.5, positions: [1, 2], all_prompt: false}

`--steering-default NAME` applies one preset to every generation request that does not skip it
(`skip_default_steering`, which needs the `steer` scope). A request's interventions are, in this
order: the default preset's, the named preset's, its own; a steer rule's are its preset's, then
its own. Errors in the file name the file, the preset and the field; the server does not start.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from circuit_serve.auth.principal import Principal, Scope
from circuit_serve.domain.errors import InvalidRequest, PermissionDenied
from circuit_serve.domain.features import (
    MAX_INTERVENTION_VALUE,
    FeatureRef,
    Intervention,
    Op,
    TranscoderShape,
    WatchRequest,
)
from circuit_serve.domain.generation import GenerationRequest
from circuit_serve.features.files import EntryReader, FeatureFileError, read_entries

_FIELDS = {"name", "interventions"}
_IV_FIELDS = {"layer", "index", "op", "value", "positions", "all_prompt", "generated"}

Presets = Mapping[str, tuple[Intervention, ...]]


def read_presets(path: Path) -> dict[str, tuple[Intervention, ...]]:
    """Read a presets file (syntax and fields; no transcoders needed)."""
    presets: dict[str, tuple[Intervention, ...]] = {}
    for i, entry in enumerate(read_entries(path, key="presets")):
        r = EntryReader(path, i, entry, fields=_FIELDS)
        name = r.str("name")
        if name in presets:
            raise r.error("name", f"{name!r} is used by an earlier preset; names must be unique")
        items = entry.get("interventions")
        if not isinstance(items, list) or not items:
            raise r.error("interventions", "must be a non-empty list of interventions")
        presets[name] = tuple(_intervention(path, i, r.where, j, item) for j, item in enumerate(items))
    if not presets:
        raise FeatureFileError(f"{path}: no presets; list at least one or leave --steering out")
    return presets


def _intervention(path: Path, i: int, where: str, j: int, item: object) -> Intervention:
    if not isinstance(item, Mapping):
        raise FeatureFileError(f"{where}: interventions[{j}]: expected a mapping of fields")
    r = EntryReader(path, i, item, fields=_IV_FIELDS)
    r.where = f"{where}: interventions[{j}]"
    raw_op = r.str("op").lower()
    try:
        op = Op(raw_op)
    except ValueError:
        raise r.error("op", f"is {raw_op!r}; must be one of set, scale, add") from None
    value = r.float("value")
    if abs(value) > MAX_INTERVENTION_VALUE:  # what a request would be refused for, said at start
        raise r.error("value", f"is {value:g}; must be within +-{MAX_INTERVENTION_VALUE:g}")
    positions = item.get("positions", [])
    if not isinstance(positions, list) or any(
        isinstance(p, bool) or not isinstance(p, int) or p < 0 for p in positions
    ):
        raise r.error("positions", f"must be a list of non-negative integers, got {positions!r}")
    flags = {}
    for name in ("all_prompt", "generated"):
        flags[name] = item.get(name, False)
        if not isinstance(flags[name], bool):
            raise r.error(name, f"must be true or false, got {flags[name]!r}")
    if not positions and not flags["all_prompt"] and not flags["generated"]:
        raise r.error("positions", "the intervention applies nowhere: set positions, all_prompt and/or generated")
    feature = FeatureRef(r.int("layer"), r.int("index"))
    return Intervention(feature, op, value, tuple(positions), flags["generated"], flags["all_prompt"])


def check_presets(presets: Presets, path: Path, shape: TranscoderShape) -> None:
    """Every preset's features exist in the loaded transcoder set (FeatureFileError otherwise)."""
    for name, ivs in presets.items():
        for j, iv in enumerate(ivs):
            if (problem := shape.check(iv.feature, where=f"{path}: preset {name!r}: interventions[{j}]")) is not None:
                raise FeatureFileError(problem)


@dataclasses.dataclass(frozen=True)
class SteeringPresets:
    """The server's presets and its default; `apply` expands them in one generation request."""

    presets: Presets = dataclasses.field(default_factory=dict)
    default: str | None = None  # --steering-default

    def get(self, name: str, *, field: str) -> tuple[Intervention, ...]:
        """The interventions of preset `name` (InvalidRequest naming `field` and the known presets)."""
        if name not in self.presets:
            known = ", ".join(sorted(self.presets)) or "none (the server was started without --steering)"
            raise InvalidRequest(f"unknown steering preset {name!r}; this server's presets: {known}", field=field)
        return self.presets[name]

    def apply(self, request: GenerationRequest, caller: Principal) -> GenerationRequest:
        """`request` with its presets' interventions listed: the default's (unless skipped: that
        needs the `steer` scope), its named preset's, then its own; steer rules' likewise."""
        ivs: list[Intervention] = []
        if self.default is not None:
            if not request.skip_default_steering:
                ivs += self.presets[self.default]
            elif not caller.allows(Scope.STEER):
                raise PermissionDenied(
                    f"skip_default_steering needs the 'steer' scope; this server steers every request with "
                    f"its default preset {self.default!r} (tenant {caller.name!r} lacks the scope)"
                )
        if request.steering_preset:
            ivs += self.get(request.steering_preset, field="steering_preset")
        watch = request.watch
        if watch is not None and any(w.steer_preset for w in watch.features):
            features = tuple(
                dataclasses.replace(
                    w, steer=(*self.get(w.steer_preset, field=f"watch[{i - watch.n_server}].steer_preset"), *w.steer)
                )
                if w.steer_preset
                else w
                for i, w in enumerate(watch.features)
            )
            watch = WatchRequest(features, watch.n_server, watch.values)
        if not ivs and watch is request.watch:
            return request
        return dataclasses.replace(request, interventions=(*ivs, *request.interventions), watch=watch)
