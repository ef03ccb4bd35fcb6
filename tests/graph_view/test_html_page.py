"""The HTML page's construction (no browser): embedding, self-containment, and the two commands that write it."""

from __future__ import annotations

import argparse
import json
import re

import pytest

from circuit_client.graph_html import embed_json, graph_html
from circuit_serve.commands import attribute
from tests.tracing.tracing_helpers import FIXTURES

HOSTILE = '</script><script>alert(1)</script><!-- \u2028 \u2029 & "quoted" </style>'


def _graph(prompt: str = "hi") -> dict:
    return {
        "metadata": {"prompt": prompt, "prompt_tokens": ["<bos>", prompt]},
        "qParams": {},
        "nodes": [{"node_id": "E_1_1", "feature_type": "embedding", "ctx_idx": 1, "layer": "E", "clerp": HOSTILE}],
        "links": [],
    }


def _data(html: str) -> str:
    return re.search(r'<script type="application/json" id="graph-data">(.*?)</script>', html, re.S).group(1)


def test_embedded_json_cannot_end_its_element_and_round_trips():
    html = graph_html(_graph(HOSTILE), key="k" * 64, source="cache")
    data = _data(html)
    assert not set(data) & {"<", ">", "&", "\u2028", "\u2029"}
    assert json.loads(data) == {"graph": _graph(HOSTILE), "key": "k" * 64, "source": "cache"}
    assert html.count("</script>") == 2  # the data element's and the script's own
    assert embed_json("a<b") == '"a\\u003cb"'


def test_page_is_self_contained():
    html = graph_html(_graph())
    assert "window.circuitGraph" in html and "#stage" in html  # script and styles inlined
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", html)
    assert "http://" not in html and "https://" not in html


def test_rejects_what_is_not_a_frontend_graph():
    with pytest.raises(ValueError, match="links"):
        graph_html({"nodes": []})


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    attribute.add_parser(parser.add_subparsers())
    args = parser.parse_args(["attribute", *argv])
    return args.run(args)


def test_circuit_serve_attribute_writes_the_view(tmp_path):
    F = FIXTURES / "llama"
    base = [
        "--model",
        str(F / "model"),
        "--transcoders",
        str(F / "transcoders"),
        "--prompt",
        "The capital of France is",
        "--no-progress",
    ]
    assert _run(base + ["--out", str(tmp_path / "g.json"), "--html", str(tmp_path / "g.html")]) == 0
    page = json.loads(_data((tmp_path / "g.html").read_text()))
    assert page["graph"] == json.loads((tmp_path / "g.json").read_text())
    assert page["key"] == "" and page["source"] == "offline"
    assert _run(base + ["--html", str(tmp_path / "only.html")]) == 0  # without --out
    assert json.loads(_data((tmp_path / "only.html").read_text()))["graph"]["nodes"] == page["graph"]["nodes"]
    with pytest.raises(SystemExit, match="--html"):
        _run(base)
