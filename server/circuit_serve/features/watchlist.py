"""The watchlist file: named features watched on served traffic, each with a rule.

    - name: cant-answer          # unique; appears in reports, metrics and finish reasons
      layer: 3
      index: 120
      threshold: 2.5             # fires where the activation is above this
      action: stop               # record | flag | stop
"""

from __future__ import annotations

from pathlib import Path

from circuit_serve.features.files import EntryReader, FeatureFileError, read_entries
from circuit_serve.features.labels import Labels
from circuit_serve.features.types import Action, FeatureRef, TranscoderShape, WatchedFeature

_FIELDS = {"name", "layer", "index", "threshold", "action"}


def load_watchlist(path: Path, shape: TranscoderShape, labels: Labels | None = None) -> tuple[WatchedFeature, ...]:
    """Read and validate a watchlist against the loaded transcoder set; labels attached when known."""
    labels = labels or Labels()
    watched: list[WatchedFeature] = []
    names: set[str] = set()
    for i, entry in enumerate(read_entries(path, key="watchlist")):
        r = EntryReader(path, i, entry, fields=_FIELDS)
        name = r.str("name")
        if name in names:
            raise r.error("name", f"{name!r} is used by an earlier entry; names must be unique")
        feature = FeatureRef(r.int("layer"), r.int("index"))
        if (problem := shape.check(feature, where=r.where)) is not None:
            raise FeatureFileError(problem)
        threshold = r.float("threshold")
        raw_action = r.str("action").lower()
        try:
            action = Action(raw_action)
        except ValueError:
            raise r.error("action", f"is {raw_action!r}; must be one of record, flag, stop") from None
        names.add(name)
        watched.append(WatchedFeature(name, feature, threshold, action, labels.get(feature)))
    if not watched:
        raise FeatureFileError(f"{path}: the watchlist is empty; list at least one feature or leave --watchlist out")
    return tuple(watched)
