"""Content address of an attribution graph.

The key is the SHA-256 of a canonical, versioned encoding of everything that
decides the graph's bytes:

1. the key-encoding version (bump `KEY_VERSION` when this encoding changes);
2. the model identity (hash of the weights files) and the transcoder identity;
3. the input token ids, BOS included, exactly as the engine sees them;
4. every setting that changes the graph (targets, logit selection, feature
   budget, batch size, pruning thresholds, ...);
5. the graph-format version of the serialized value.

The encoding is JSON with sorted keys and no whitespace; setting values may be
None, bools, ints, floats, strings or lists of those. Floats are written with
Python's shortest round-trip repr, so 0.8 and 0.8000001 give different keys and
the same float always gives the same key. Never pickle.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

KEY_VERSION = 1

# None, bool, int, float, str, or a list of those
SettingValue = Any


def _canonical(value: object, where: str) -> object:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: non-finite float {value!r} cannot be part of a graph key")
        return value
    if isinstance(value, (list, tuple)):
        return [_canonical(v, where) for v in value]
    raise TypeError(f"{where}: {type(value).__name__} is not a key-encodable setting value")


def key_material(
    *,
    model_id: str,
    transcoder_id: str,
    token_ids: Sequence[int],
    settings: Mapping[str, SettingValue],
    graph_format: int,
) -> bytes:
    """The canonical bytes that `graph_key` hashes (exposed for tests and debugging)."""
    doc = {
        "key_version": KEY_VERSION,
        "model": model_id,
        "transcoders": transcoder_id,
        "tokens": [int(t) for t in token_ids],
        "settings": {str(k): _canonical(v, f"settings.{k}") for k, v in settings.items()},
        "graph_format": int(graph_format),
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def graph_key(
    *,
    model_id: str,
    transcoder_id: str,
    token_ids: Sequence[int],
    settings: Mapping[str, SettingValue],
    graph_format: int,
) -> str:
    """Hex SHA-256 content address of the graph these inputs produce."""
    material = key_material(
        model_id=model_id,
        transcoder_id=transcoder_id,
        token_ids=token_ids,
        settings=settings,
        graph_format=graph_format,
    )
    return hashlib.sha256(material).hexdigest()


def is_graph_key(text: str) -> bool:
    """Whether `text` has the shape of a graph key (64 lowercase hex digits)."""
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)
