"""The watchlist file: named features watched on served traffic, each with a rule.

- name: cant-answer          # unique; appears in reports, metrics and finish reasons
  layer: 3
  index: 120
  threshold: 2.5             # fires where the activation is above this
  action: stop               # record | flag | stop
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from circuit_serve.domain.features import Action, FeatureRef, TranscoderShape, WatchedFeature
from circuit_serve.features.files import EntryReader, FeatureFileError, read_entries
from circuit_serve.features.labels import Labels

_FIELDS = {"name", "layer", "index", "threshold", "action"}


def read_watchlist(path: Path) -> tuple[WatchedFeature, ...]:
    """Read a watchlist file (syntax and fields; no transcoders needed)."""
    watched: list[WatchedFeature] = []
    names: set[str] = set()
    for i, entry in enumerate(read_entries(path, key="watchlist")):
        r = EntryReader(path, i, entry, fields=_FIELDS)
        name = r.str("name")
        if name in names:
            raise r.error("name", f"{name!r} is used by an earlier entry; names must be unique")
        feature = FeatureRef(r.int("layer"), r.int("index"))
        threshold = r.float("threshold")
        raw_action = r.str("action").lower()
        try:
            action = Action(raw_action)
        except ValueError:
            action = None
        if action is None or action is Action.STEER:  # steer rules are a request's own (GenerateRequest.watch)
            raise r.error("action", f"is {raw_action!r}; must be one of record, flag, stop")
        names.add(name)
        watched.append(WatchedFeature(name, feature, threshold, action))
    if not watched:
        raise FeatureFileError(f"{path}: the watchlist is empty; list at least one feature or leave --watchlist out")
    return tuple(watched)


def check_watchlist(
    watched: tuple[WatchedFeature, ...], path: Path, shape: TranscoderShape, labels: Labels | None = None
) -> tuple[WatchedFeature, ...]:
    """Every watched feature exists in the loaded transcoder set; labels attached when known."""
    labels = labels or Labels()
    for i, w in enumerate(watched):
        if (problem := shape.check(w.feature, where=f"{path}: entry {i} ({w.name!r})")) is not None:
            raise FeatureFileError(problem)
    return tuple(dataclasses.replace(w, label=labels.get(w.feature)) for w in watched)


def load_watchlist(path: Path, shape: TranscoderShape, labels: Labels | None = None) -> tuple[WatchedFeature, ...]:
    """Read and validate a watchlist against the loaded transcoder set; labels attached when known."""
    return check_watchlist(read_watchlist(path), path, shape, labels)
