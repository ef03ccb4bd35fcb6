"""`circuit-serve attribute` end to end on the reference fixture (in-process)."""

from __future__ import annotations

import argparse
import json

import numpy as np

from circuit_serve.commands import attribute
from tests.tracing.tracing_helpers import FIXTURES


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    attribute.add_parser(parser.add_subparsers())
    args = parser.parse_args(["attribute", *argv])
    return args.run(args)


def test_attribute_command_writes_json_and_npz(tmp_path, capsys):
    F = FIXTURES / "llama"
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps([{"layer": 0, "index": 3, "label": "something"}]))
    rc = _run(
        [
            "--model",
            str(F / "model"),
            "--transcoders",
            str(F / "transcoders"),
            "--prompt",
            "The capital of France is",
            "--out",
            str(tmp_path / "g.json"),
            "--npz",
            str(tmp_path / "g.npz"),
            "--labels",
            str(labels),
            "--no-progress",
        ]
    )
    assert rc == 0
    js = json.loads((tmp_path / "g.json").read_text())
    assert {"metadata", "qParams", "nodes", "links"} <= set(js)
    assert js["metadata"]["slug"] == "g"
    ref = np.load(FIXTURES / "ref" / "llama_plt.npz")
    Z = np.load(tmp_path / "g.npz")
    assert np.abs(Z["adjacency_matrix"] - ref["adjacency_matrix"]).max() <= 1e-4 * np.abs(ref["adjacency_matrix"]).max()
    assert np.array_equal(Z["input_tokens"], ref["input_tokens"])
    assert "333 active features" in capsys.readouterr().out


def test_attribute_command_token_ids_and_bad_input(tmp_path, capsys):
    F = FIXTURES / "llama"
    base = [
        "--model",
        str(F / "model"),
        "--transcoders",
        str(F / "transcoders"),
        "--out",
        str(tmp_path / "g.json"),
        "--no-progress",
    ]
    assert _run(base + ["--token-ids", "2,160,80", "--max-feature-nodes", "5", "--max-n-logits", "2"]) == 0
    assert _run(base + ["--prompt", "hi", "--node-threshold", "1.5"]) == 2
    assert "node_threshold" in capsys.readouterr().err
