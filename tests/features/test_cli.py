"""Client-side parsing and formatting of `circuit features` / `circuit steer` (no server)."""

from __future__ import annotations

import pytest

from circuit_client.features import FeatureValue, Intervention, PositionActivations
from circuit_client.features_cli import format_table, side_by_side


def test_intervention_specs():
    assert Intervention.parse("2:17:set:0") == Intervention(2, 17, "set", 0.0, (), True, True)
    assert Intervention.parse("2:17:SCALE:1.5@3,4") == Intervention(2, 17, "scale", 1.5, (3, 4))
    assert Intervention.parse("1:5:add:-2@gen") == Intervention(1, 5, "add", -2.0, (), True)
    for bad in ("2:17:set", "2:17:clamp:0", "a:1:set:0", "1:2:set:0@x"):
        with pytest.raises(ValueError, match="expected L:I:OP:VALUE"):
            Intervention.parse(bad)


def test_tables():
    rows = [
        PositionActivations(0, 1, "<s>", (FeatureValue(1, 2, 0.0, "paris"),)),
        PositionActivations(1, 9, "Par", (FeatureValue(1, 2, 3.25, "paris"),)),
    ]
    assert format_table(rows, listed=True).splitlines() == [
        "pos\ttoken\t1:2 paris",
        "0\t'<s>'\t0.000",
        "1\t'Par'\t3.250",
    ]
    assert "1:2=3.250 (paris)" in format_table(rows, listed=False)
    text = side_by_side("left text", "right", width=40)
    assert text.splitlines()[0].startswith("default") and "| right" in text
