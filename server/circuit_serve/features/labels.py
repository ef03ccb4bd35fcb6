"""The labels file: human-readable names of features, shown in results, graphs and metrics.

    [{"layer": 2, "index": 17, "label": "unknown entity"}, ...]      (JSON or YAML)

Other fields (the demo's `selectivity`, a description, ...) are allowed and ignored.
"""

from __future__ import annotations

from pathlib import Path

from circuit_serve.domain.features import FeatureRef, TranscoderShape
from circuit_serve.features.files import EntryReader, FeatureFileError, read_entries


class Labels:
    """Feature -> label; features without an entry have the label ""."""

    def __init__(self, labels: dict[FeatureRef, str] | None = None, *, path: Path | None = None) -> None:
        self._labels = dict(labels or {})
        self.path = path  # the file they came from

    def features(self) -> list[FeatureRef]:
        """Labelled features in file order."""
        return list(self._labels)

    def __len__(self) -> int:
        return len(self._labels)

    def get(self, feature: FeatureRef) -> str:
        return self._labels.get(feature, "")

    def as_dict(self) -> dict[tuple[int, int], str]:
        """{(layer, index): label} for the engine's frontend JSON (`clerp`)."""
        return {(f.layer, f.index): label for f, label in self._labels.items()}


def read_labels(path: Path) -> Labels:
    """Read a labels file (syntax and fields; no transcoders needed)."""
    labels: dict[FeatureRef, str] = {}
    for i, entry in enumerate(read_entries(path, key="labels")):
        r = EntryReader(path, i, entry, fields=None)
        feature = FeatureRef(r.int("layer"), r.int("index"))
        label = r.str("label")
        if feature in labels:
            raise FeatureFileError(f"{r.where}: feature {feature} already has the label {labels[feature]!r}")
        labels[feature] = label
    return Labels(labels, path=path)


def check_labels(labels: Labels, shape: TranscoderShape) -> Labels:
    """Every labelled feature exists in the loaded transcoder set."""
    for i, feature in enumerate(labels.features()):
        if (problem := shape.check(feature, where=f"{labels.path}: entry {i}")) is not None:
            raise FeatureFileError(problem)
    return labels


def load_labels(path: Path, shape: TranscoderShape) -> Labels:
    """Read and validate a labels file against the loaded transcoder set."""
    return check_labels(read_labels(path), shape)
