"""The labels file: human-readable names of features, shown in results, graphs and metrics.

    [{"layer": 2, "index": 17, "label": "unknown entity"}, ...]      (JSON or YAML)

Other fields (the demo's `selectivity`, a description, ...) are allowed and ignored.
"""

from __future__ import annotations

from pathlib import Path

from circuit_serve.features.files import EntryReader, FeatureFileError, read_entries
from circuit_serve.features.types import FeatureRef, TranscoderShape

class Labels:
    """Feature -> label; features without an entry have the label ""."""

    def __init__(self, labels: dict[FeatureRef, str] | None = None) -> None:
        self._labels = dict(labels or {})

    def __len__(self) -> int:
        return len(self._labels)

    def get(self, feature: FeatureRef) -> str:
        return self._labels.get(feature, "")

    def as_dict(self) -> dict[tuple[int, int], str]:
        """{(layer, index): label} for the engine's frontend JSON (`clerp`)."""
        return {(f.layer, f.index): label for f, label in self._labels.items()}


def load_labels(path: Path, shape: TranscoderShape) -> Labels:
    """Read and validate a labels file against the loaded transcoder set."""
    labels: dict[FeatureRef, str] = {}
    for i, entry in enumerate(read_entries(path, key="labels")):
        r = EntryReader(path, i, entry, fields=None)
        feature = FeatureRef(r.int("layer"), r.int("index"))
        label = r.str("label")
        if (problem := shape.check(feature, where=r.where)) is not None:
            raise FeatureFileError(problem)
        if feature in labels:
            raise FeatureFileError(f"{r.where}: feature {feature} already has the label {labels[feature]!r}")
        labels[feature] = label
    return Labels(labels)
