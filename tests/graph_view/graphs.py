"""Attribution graphs for the graph-view tests, computed in-process with the tracing engine.

- `demo_graph()`: the trained demo model's graph of the demo prompt (what the demo audits), with
  the committed feature labels.
- `large_graph()`: the same model on a long prompt (about 200 words of its synthetic language, with
  markup in it) with loose pruning (node threshold 1.0, edge threshold 0.995): over 2,000 nodes.
"""

from __future__ import annotations

import json

import torch

from circuit_serve.commands.demo import DEFAULT_PROMPT
from circuit_serve.demo.data import World
from circuit_serve.demo.install import ASSETS

MARKUP = '</script><script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
LARGE_THRESHOLDS = (1.0, 0.995)


def _model():
    from circuit_serve.tracing import ReplacementModel

    torch.set_num_threads(1)
    return ReplacementModel.from_pretrained(ASSETS / "model", ASSETS / "transcoders", dtype=torch.float32, device="cpu")


def demo_labels() -> dict[tuple[int, int], str]:
    return {
        (int(e["layer"]), int(e["index"])): str(e["label"]) for e in json.loads((ASSETS / "labels.json").read_text())
    }


def demo_graph(rm=None) -> dict:
    rm = rm or _model()
    graph = rm.attribute(DEFAULT_PROMPT, head_loadings=True)  # links carry head loadings
    return graph.to_frontend_json(slug="demo", labels=demo_labels())


def long_prompt(n_words: int = 200) -> str:
    stream = World(0).training_sentences(5)
    words: list[str] = []
    while len(words) < n_words:
        words += next(stream)
    half = len(words) // 2
    return " ".join(words[:half] + [MARKUP] + words[half:]) + " " + DEFAULT_PROMPT


def large_graph(rm=None) -> dict:
    rm = rm or _model()
    nt, et = LARGE_THRESHOLDS
    graph = rm.attribute(long_prompt(), node_threshold=nt, edge_threshold=et)
    return graph.to_frontend_json(slug="large", labels=demo_labels(), node_threshold=nt, edge_threshold=et)
