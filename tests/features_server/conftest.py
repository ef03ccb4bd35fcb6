"""One real server with transcoders, labels and a 10-feature watchlist chosen on the demo model.

The watched features are picked in this process with the tracing engine (the code path the server
uses) from the greedy completion of PROMPT, so the tests know where each one fires:
- `stopper` (stop):  first above its threshold at completion position STOP_AT, nowhere before;
- `marker` (record): above its threshold at known completion positions <= STOP_AT;
- `flagger` (flag):  fires somewhere in the completion before STOP_AT;
- seven more `record` features, so the watchlist has ten.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from circuit_serve.demo.random_transcoders import write_random_transcoders

PROMPT = "the old river runs to the sea and the"
N_NEW = 16
STOP_AT = 6  # completion position where `stopper` first fires


@dataclass
class Scenario:
    model_dir: Path
    transcoders: Path
    labels: Path
    watchlist: Path
    prompt_ids: list[int]
    greedy: list[int]  # N_NEW greedy completion ids (EOS ignored)
    acts: torch.Tensor  # (P + N_NEW, L, d_tc) activations of prompt + greedy completion
    pre: torch.Tensor  # (P + N_NEW, L, d_tc) their pre-activations
    threshold: torch.Tensor  # (L, d_tc) JumpReLU thresholds
    watched: dict[str, dict]  # name -> watchlist entry
    expected_positions: dict[str, list[int]]  # name -> completion positions above threshold, <= STOP_AT

    def label(self, name: str) -> str:
        e = self.watched[name]
        return "marker label" if name == "marker" else label_of(e["layer"], e["index"])


def label_of(layer: int, index: int) -> str:
    return f"L{layer}#{index}"


def _dense(fa) -> torch.Tensor:
    out = torch.zeros(fa.n_pos, fa.n_layers, fa.d_transcoder)
    i = fa.indices
    out[i[:, 1], i[:, 0], i[:, 2]] = fa.values
    return out


def _pick(acts: torch.Tensor, n_prompt: int) -> dict[str, dict]:
    """Choose the stopper, marker and flagger features (see the module docstring)."""
    P = n_prompt
    L, F = acts.shape[1:]
    flat = acts.reshape(acts.shape[0], L * F)  # (T, L*F)
    chosen: dict[str, dict] = {}

    def entry(name, k, threshold, action):
        return {"name": name, "layer": k // F, "index": k % F, "threshold": float(threshold), "action": action}

    # stopper: value at P + STOP_AT clearly above every earlier position's value
    before = flat[: P + STOP_AT].max(0).values
    at = flat[P + STOP_AT]
    margin = at - before
    k = int(margin.argmax())
    assert margin[k] > 1e-2, "no feature fires first at STOP_AT on this prompt"
    chosen["stopper"] = entry("stopper", k, (at[k] + before[k]) / 2, "stop")
    # marker: fires at >= 2 completion positions <= STOP_AT and nowhere in the prompt, with clear gaps
    window = flat[P : P + STOP_AT + 1]  # (STOP_AT + 1, L*F)
    best = None
    for k in range(L * F):
        vals = window[:, k]
        prompt_max = float(flat[:P, k].max())
        t = max(prompt_max, float(vals.median())) + 1e-3
        above = vals > t
        gap = float((vals - t).abs().min())
        if (
            2 <= int(above.sum()) <= STOP_AT
            and gap > 1e-3
            and k != chosen["stopper"]["layer"] * F + chosen["stopper"]["index"]
        ):
            if best is None or gap > best[0]:
                best = (gap, k, t)
    assert best is not None
    chosen["marker"] = entry("marker", best[1], best[2], "record")
    # flagger: the largest completion activation before STOP_AT, threshold halfway
    k = int(window[:STOP_AT].max(0).values.argmax())
    chosen["flagger"] = entry("flagger", k, float(window[:STOP_AT, k].max()) / 2, "flag")
    return chosen


@pytest.fixture(scope="session")
def scenario(demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    from transformers import AutoTokenizer

    from circuit_serve.tracing import ReplacementModel

    tmp = tmp_path_factory.mktemp("features")
    tc_dir = write_random_transcoders(demo_model_dir, tmp / "transcoders", d_transcoder=256, target_l0=16, seed=3)
    rm = ReplacementModel.from_pretrained(demo_model_dir, tc_dir, dtype=torch.float32)
    prompt_ids = list(AutoTokenizer.from_pretrained(str(demo_model_dir)).encode(PROMPT))  # as vLLM tokenizes
    ids = list(prompt_ids)
    with torch.inference_mode():
        for _ in range(N_NEW):
            ids.append(int(rm.model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    fa = rm.feature_activations(ids)
    shift = fa.n_pos - len(ids)  # BOS the engine prepends, if any
    acts = _dense(fa)[shift:]
    with torch.inference_mode():
        rec = rm.record(rm.check_tokens(ids)[0])
        pre = torch.stack([rm.transcoders.pre_activations(layer, x).float() for layer, x in enumerate(rec.x_in)], 1)[
            shift:
        ]  # (T, L, d_tc)
    threshold = torch.stack(rm.transcoders.threshold)  # (L, d_tc)
    chosen = _pick(acts, len(prompt_ids))
    F = acts.shape[2]
    taken = {(e["layer"], e["index"]) for e in chosen.values()}
    extra = [
        k
        for k in acts[len(prompt_ids) :].reshape(N_NEW, -1).max(0).values.argsort(descending=True).tolist()
        if (k // F, k % F) not in taken
    ][:7]
    watch = list(chosen.values()) + [
        {"name": f"extra-{i}", "layer": k // F, "index": k % F, "threshold": 1e9, "action": "record"}
        for i, k in enumerate(extra)
    ]
    expected = {}
    for e in watch:
        vals = acts[len(prompt_ids) : len(prompt_ids) + STOP_AT + 1, e["layer"], e["index"]]
        expected[e["name"]] = (vals > e["threshold"]).nonzero().flatten().tolist()
    watchlist = tmp / "watchlist.yaml"
    watchlist.write_text(
        "".join(
            f"- {{name: {e['name']}, layer: {e['layer']}, index: {e['index']}, threshold: {e['threshold']!r}, "
            f"action: {e['action']}}}\n"
            for e in watch
        )
    )
    labels = tmp / "labels.json"  # every feature labelled; the marker by name
    labels.write_text(
        json.dumps(
            [
                {
                    "layer": layer,
                    "index": index,
                    "selectivity": 0.5,
                    "label": "marker label"
                    if (layer, index) == (chosen["marker"]["layer"], chosen["marker"]["index"])
                    else label_of(layer, index),
                }
                for layer in range(acts.shape[1])
                for index in range(F)
            ]
        )
    )
    return Scenario(
        demo_model_dir,
        tc_dir,
        labels,
        watchlist,
        prompt_ids,
        ids[len(prompt_ids) :],
        acts,
        pre,
        threshold,
        {e["name"]: e for e in watch},
        expected,
    )


@pytest.fixture(scope="session")
def features_server(launch_server, scenario: Scenario):
    # vLLM's engine core in its own process (the production default): the monitor's values travel
    # from vLLM's worker process to the server.
    return launch_server(
        "--transcoders",
        str(scenario.transcoders),
        "--labels",
        str(scenario.labels),
        "--watchlist",
        str(scenario.watchlist),
        env={"VLLM_ENABLE_V1_MULTIPROCESSING": "1"},
    )


def settled(server, name: str) -> float:
    """A vLLM counter once it stops moving (vLLM's step stats reach the server with its outputs)."""
    value = server.vllm(name)
    for _ in range(20):
        time.sleep(0.1)
        value, last = server.vllm(name), value
        if value == last:
            return value
    return value
