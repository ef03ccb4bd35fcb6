"""Reading the labels and watchlist files: JSON or YAML, a list of entries.

A file holds either a list of entries or a mapping with one key (`labels` or
`watchlist`) whose value is that list. Every error names the file, the entry
(its position, and its name when it has one) and the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class FeatureFileError(ValueError):
    """A labels or watchlist file that cannot be used; the server refuses to start."""


def read_entries(path: Path, *, key: str) -> list[Mapping[str, Any]]:
    """The list of entry mappings in `path` (JSON by `.json`, else YAML)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FeatureFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FeatureFileError(f"{path}: not valid JSON: {exc}") from exc
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise FeatureFileError(f"{path}: not valid YAML: {exc}") from exc
    if isinstance(data, Mapping) and set(data) == {key}:
        data = data[key]
    if not isinstance(data, list):
        raise FeatureFileError(f"{path}: expected a list of entries (or a mapping with the single key {key!r})")
    for i, entry in enumerate(data):
        if not isinstance(entry, Mapping):
            raise FeatureFileError(f"{path}: entry {i}: expected a mapping of fields, got {type(entry).__name__}")
    return data


class EntryReader:
    """Typed field access for one entry, with errors that say where."""

    def __init__(self, path: Path, position: int, entry: Mapping[str, Any], *, fields: set[str] | None) -> None:
        """`fields`: the allowed field names (None: any; unknown ones are ignored)."""
        self.path = path
        self.entry = entry
        name = entry.get("name")
        self.where = f"{path}: entry {position}" + (f" ({name!r})" if isinstance(name, str) else "")
        unknown = sorted(str(k) for k in entry if k not in fields) if fields is not None else []
        if unknown and fields is not None:
            raise self.error(unknown[0], f"unknown field; allowed fields are {', '.join(sorted(fields))}")

    def error(self, field: str, message: str) -> FeatureFileError:
        return FeatureFileError(f"{self.where}: field {field!r}: {message}")

    def _get(self, field: str) -> Any:
        if field not in self.entry or self.entry[field] is None:
            raise self.error(field, "is missing")
        return self.entry[field]

    def int(self, field: str) -> int:
        value = self._get(field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.error(field, f"must be a non-negative integer, got {value!r}")
        return value

    def str(self, field: str) -> str:
        value = self._get(field)
        if not isinstance(value, str) or not value.strip():
            raise self.error(field, f"must be a non-empty string, got {value!r}")
        return value.strip()

    def float(self, field: str) -> float:
        value = self._get(field)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self.error(field, f"must be a finite number, got {value!r}")
        return float(value)
