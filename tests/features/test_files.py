"""Labels and watchlist files: valid forms load; every problem names file, entry and field."""

from __future__ import annotations

import json

import pytest

from circuit_serve.domain.features import Action, FeatureRef, TranscoderShape
from circuit_serve.features.files import FeatureFileError
from circuit_serve.features.labels import Labels, load_labels
from circuit_serve.features.watchlist import load_watchlist

SHAPE = TranscoderShape(n_layers=4, d_transcoder=100)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_labels_json_and_yaml(tmp_path):
    j = write(tmp_path, "l.json", json.dumps([{"layer": 1, "index": 7, "label": "Paris"}]))
    y = write(
        tmp_path,
        "l.yaml",
        "labels:\n  - {layer: 1, index: 7, label: Paris, selectivity: 0.9}\n  - {layer: 3, index: 99, label: x}\n",
    )
    assert load_labels(j, SHAPE).get(FeatureRef(1, 7)) == "Paris"
    labels = load_labels(y, SHAPE)
    assert len(labels) == 2 and labels.get(FeatureRef(0, 0)) == ""
    assert labels.as_dict() == {(1, 7): "Paris", (3, 99): "x"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[{"layer": 1, "index": 7}]', "entry 0: field 'label': is missing"),
        ('[{"layer": "1", "index": 7, "label": "a"}]', "entry 0: field 'layer': must be a non-negative integer"),
        (
            '[{"layer": 1, "index": 7, "label": "a"}, {"layer": 4, "index": 0, "label": "b"}]',
            "entry 1: layer 4 does not exist; layers are 0..3",
        ),
        (
            '[{"layer": 1, "index": 100, "label": "a"}]',
            "entry 0: index 100 does not exist; each layer has features 0..99",
        ),
        (
            '[{"layer": 1, "index": 7, "label": "a"}, {"layer": 1, "index": 7, "label": "b"}]',
            "already has the label 'a'",
        ),
        ('{"layer": 1}', "expected a list of entries"),
        ("[1, 2]", "entry 0: expected a mapping"),
        ('[{"layer": 1,', "not valid JSON"),
    ],
)
def test_labels_errors(tmp_path, text, message):
    path = write(tmp_path, "labels.json", text)
    with pytest.raises(FeatureFileError, match=message) as info:
        load_labels(path, SHAPE)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(FeatureFileError, match="cannot read"):
        load_labels(tmp_path / "nope.yaml", SHAPE)


WATCH = """
- {name: cant-answer, layer: 2, index: 5, threshold: 1.5, action: stop}
- {name: paris, layer: 1, index: 7, threshold: 0, action: FLAG}
- {name: misc, layer: 0, index: 0, threshold: 2, action: record}
"""


def test_watchlist_loads_with_labels(tmp_path):
    labels = Labels({FeatureRef(1, 7): "Paris"})
    watched = load_watchlist(write(tmp_path, "w.yaml", WATCH), SHAPE, labels)
    assert [w.name for w in watched] == ["cant-answer", "paris", "misc"]
    assert watched[0].action is Action.STOP and watched[0].threshold == 1.5 and watched[0].feature == FeatureRef(2, 5)
    assert watched[1].action is Action.FLAG and watched[1].label == "Paris"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "- {name: a, layer: 2, index: 5, threshold: 1, action: halt}",
            r"entry 0 \('a'\): field 'action': is 'halt'; must be one of record, flag, stop",
        ),
        (
            "- {name: a, layer: 2, index: 5, threshold: high, action: stop}",
            "field 'threshold': must be a finite number",
        ),
        (
            "- {name: a, layer: 2, index: 5, threshold: 1, action: stop}\n- {name: a, layer: 1, index: 5, threshold: 1, action: stop}",
            r"entry 1 \('a'\): field 'name': 'a' is used by an earlier entry",
        ),
        ("- {name: a, layer: 9, index: 5, threshold: 1, action: stop}", "layer 9 does not exist"),
        (
            "- {name: a, layer: 1, index: -1, threshold: 1, action: stop}",
            "field 'index': must be a non-negative integer",
        ),
        ("- {layer: 1, index: 1, threshold: 1, action: stop}", "field 'name': is missing"),
        ("- {name: a, layer: 1, index: 1, treshold: 1, action: stop}", "field 'treshold': unknown field"),
        ("[]", "the watchlist is empty"),
        ("- {name: a, layer: [1, index: 1}", "not valid YAML"),
    ],
)
def test_watchlist_errors(tmp_path, text, message):
    path = write(tmp_path, "watch.yaml", text)
    with pytest.raises(FeatureFileError, match=message):
        load_watchlist(path, SHAPE)
