"""Feature labels for the demo transcoders, read off the data the features fire on.

Every position of a labelling corpus gets a *key*: the final position of a fact prompt (where the
answer is predicted) gets the fact ("capital of veigrouan -> tesville"); every other position gets its
token ('"veigrouan"'). A feature's label is the key with the highest mean activation; its selectivity
is `1 - mean(elsewhere) / mean(on that key)` in [0, 1] (1: fires on nothing else). Features that never
fire on the corpus get no entry.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from circuit_serve.demo.activations import mlp_inputs
from circuit_serve.demo.data import Prompt, World
from circuit_serve.demo.transcoders import Transcoder


def fact_key(prompt: Prompt) -> str:
    return f"{prompt.fact.relation} of {prompt.fact.country} -> {prompt.fact.attribute}"


def corpus(world: World, vocab: dict[str, int], stream_rows: torch.Tensor) -> tuple[list[list[int]], list[str]]:
    """Rows (all fact prompts, then stream rows) and the key of every non-BOS position, in order."""
    inv = {i: w for w, i in vocab.items()}
    rows, keys = [], []
    for kind in ("train", "heldout_sentence", "near", "far"):
        for p in world.prompts(kind):
            rows.append([vocab["<bos>"]] + [vocab[w] for w in p.words])
            keys.extend(f'"{w}"' for w in p.words[:-1])
            keys.append(fact_key(p))
    for r in stream_rows.tolist():
        rows.append(r)
        keys.extend(f'"{inv[t]}"' for t in r[1:])
    return rows, keys


@torch.no_grad()
def label_features(model, transcoders: list[Transcoder], rows: list[list[int]], keys: list[str]) -> list[dict]:
    """`[{layer, index, label, selectivity}]` for every feature that fires on the corpus."""
    names = sorted(set(keys))
    key_id = torch.tensor([names.index(k) for k in keys])  # (N,)
    counts = torch.bincount(key_id, minlength=len(names)).float()  # (K,)
    out = []
    for li, x in enumerate(mlp_inputs(model, rows)):
        acts = transcoders[li].encode(x)  # (N, F)
        sums = torch.zeros(len(names), acts.shape[1]).index_add_(0, key_id, acts)  # (K, F)
        means = sums / counts[:, None]
        best_mean, best = means.max(0)  # (F,)
        rest = (sums.sum(0) - sums[best, torch.arange(acts.shape[1])]) / (len(keys) - counts[best])
        for f in torch.nonzero(best_mean > 0).flatten().tolist():
            sel = 1.0 - (rest[f] / best_mean[f]).item()
            out.append({"layer": li, "index": f, "label": names[best[f]], "selectivity": round(max(sel, 0.0), 4)})
    return out


def write_labels(labels: list[dict], path: str | Path) -> None:
    Path(path).write_text(json.dumps(labels, indent=1) + "\n")
