"""The vectorized steering bank (monitoring/steer.py) against a per-request reference (no vLLM).

Several requests in one batch, each with its own features and interventions (set / scale / add,
several on one feature, listed positions, every prompt position, generated tokens, a steer rule
switched on mid-generation and one that never fires), prefill and decode rows, an unsteered row,
on per-layer transcoders (ReLU, JumpReLU, TopK) and a cross-layer one. The reference computes
each request's features one by one with `Intervention.apply`, as the replacement model's
steering does; the bank's MLP outputs must equal it, and the unsteered row must be untouched.
"""

from __future__ import annotations

import sys

import pytest
import torch

from circuit_serve.domain.features import FeatureRef, Intervention, Op
from circuit_serve.monitoring import topk_gate
from circuit_serve.monitoring.spec import MonitorSpec
from circuit_serve.monitoring.steer import SteerBank
from circuit_serve.monitoring.taps import TapBank
from circuit_serve.monitoring.wire import SteerArgs, SteerEntry
from tests.features.tiny import tiny_transcoders

N_PROMPT = 6
# batch row -> [(layer, index, op, value, positions, all_prompt, generated, rule)]
REQUESTS = {
    0: [
        (0, 3, "add", 2.0, (1, 4), False, True, -1),
        (0, 3, "scale", 0.5, (), True, False, -1),  # a second op on the same feature, in order
        (0, 3, "set", -1.5, (4,), False, False, -1),
        (2, 7, "scale", 3.0, (), False, True, -1),
    ],
    2: [
        (0, 5, "set", 4.0, (0, 2, 5), False, False, -1),
        (1, 3, "add", -1.0, (), True, True, -1),
        (1, 9, "add", 5.0, (), False, True, 0),  # waits for its steer rule (switched on below)
        (2, 1, "add", 5.0, (), False, True, 1),  # its rule never fires
    ],
    3: [(0, 3, "add", 1.0, (), False, True, -1), (2, 7, "set", 0.0, (), True, True, -1)],
}
# batch layout: row 0 prefill (positions 0-5), row 1 unsteered, row 2 generated tokens 6-8 (as
# a speculative or chunked step would feed them), row 3 a prefill chunk crossing the prompt's end
QUERY_START = [0, 6, 9, 12, 17]
POSITIONS = [0, 1, 2, 3, 4, 5, 0, 1, 2, 6, 7, 8, 3, 4, 5, 6, 7]


def transcoders(kind: str):
    tcs = tiny_transcoders("clt" if kind == "clt" else "plt", seed=3)
    if kind == "jumprelu":
        g = torch.Generator().manual_seed(4)
        tcs.activation = "jumprelu"
        tcs.threshold = [torch.rand(t.shape[0], generator=g) * 0.5 for t in tcs.b_enc]
    if kind == "topk":
        tcs.activation, tcs.top_k = "topk", 6
    return tcs


def entries(tcs, specs) -> SteerArgs:
    out = []
    for layer, index, op, value, positions, all_prompt, generated, rule in specs:
        thr = float(tcs.threshold[layer][index]) if tcs.threshold is not None else 0.0
        row = None if tcs.activation == "topk" else tcs.W_enc[layer][index].tolist()
        decoder = tcs.decoder_rows(layer, torch.tensor([index]))[0].tolist()
        out.append(
            SteerEntry(
                layer, index, op, value, list(positions), all_prompt, generated, row,
                float(tcs.b_enc[layer][index]), thr, decoder, rule,
            )
        )  # fmt: skip
    return SteerArgs(N_PROMPT, out)


def reference(taps: TapBank, tcs, requests, started: dict, x_mid, mlp_out) -> list[torch.Tensor]:
    """Per request, per feature, per intervention: the deltas added to each layer's MLP output."""
    out = [y.clone() for y in mlp_out]
    pos = torch.tensor(POSITIONS)
    for row, specs in requests.items():
        s, e = QUERY_START[row], QUERY_START[row + 1]
        p = pos[s:e]
        feats: dict[tuple[int, int], list] = {}
        for spec in specs:
            if spec[7] < 0 or spec[7] in started.get(row, {}):
                feats.setdefault(spec[:2], []).append(spec)
        for (layer, index), ops in feats.items():
            x = taps.normalized(layer, x_mid[layer][s:e])  # (n, d)
            w = taps.fold(layer, tcs.W_enc[layer][index][None])[0]
            if tcs.activation == "topk":
                full = x @ taps.fold(layer, tcs.W_enc[layer]).T + tcs.b_enc[layer]
                kth = full.topk(tcs.top_k, dim=-1).values[:, -1]
                pre = full[:, index]
                a = torch.where(pre >= kth, pre.clamp(min=0), torch.zeros_like(pre))
            else:
                pre = x @ w + tcs.b_enc[layer][index]
                thr = float(tcs.threshold[layer][index]) if tcs.threshold is not None else 0.0
                a = pre * (pre > thr)
            new = a
            for _, _, op, value, positions, all_prompt, generated, rule in ops:
                iv = Intervention(FeatureRef(layer, index), Op(op), value, positions, generated, all_prompt)
                m = (p >= N_PROMPT) if generated else torch.zeros_like(p, dtype=torch.bool)
                m = m | (p < N_PROMPT) if all_prompt else m | torch.isin(p, torch.tensor(positions, dtype=torch.long))
                if rule >= 0:
                    m = m & (p >= started[row][rule])
                new = torch.where(m, iv.apply(new), new)
            dec = tcs.decoder_rows(layer, torch.tensor([index]))[0]  # (n_out, d)
            for k in range(dec.shape[0]):
                out[layer + k][s:e] += (new - a)[:, None] * dec[k]
    return out


def run_bank(bank: SteerBank, x_mid, mlp_out, positions=POSITIONS, query_start=QUERY_START) -> list[torch.Tensor]:
    """The MLP outputs of one pass (the bank adds in place: it gets copies of `mlp_out`)."""
    bank.begin_pass(torch.tensor(positions), query_start)
    out = []
    for layer in range(len(x_mid)):  # the model's order: the norm's tap, then the MLP's output
        bank.on_input(layer, x_mid[layer])
        out.append(bank.on_output(layer, mlp_out[layer].clone()))
    bank.end_pass()
    return out


@pytest.mark.parametrize("kind", ["relu", "jumprelu", "topk", "topk-gated", "clt"])
def test_bank_equals_per_request_steering(kind, monkeypatch):
    tcs = transcoders(kind.removesuffix("-gated"))
    spec = MonitorSpec.from_transcoders(tcs, [], request_slots=1, endpoint="inproc://unused")
    g = torch.Generator().manual_seed(5)
    L, d, T = tcs.n_layers, tcs.d_model, QUERY_START[-1]
    gains = [1.0 + 0.2 * torch.randn(d, generator=g) for _ in range(L)]
    taps = TapBank(spec, gains=gains, eps=[1e-6] * L, device=torch.device("cpu"), max_tokens=64)
    if kind == "topk-gated":  # the CPU's sentinel gate (topk_gate), past its warm-up, on every step
        monkeypatch.setattr(topk_gate, "MIN_TOKENS", 1)
        for layer in range(L):
            taps.gate.sentinels[layer] = torch.arange(0, tcs.d_transcoder, 4)[: taps.gate.s]
    else:
        taps.gate = None
    bank = SteerBank(taps)
    for row, specs in REQUESTS.items():
        bank.rows[row] = bank.request(entries(tcs, specs))
    x_mid = [torch.randn(T, d, generator=g) * 2 for _ in range(L)]
    mlp_out = [torch.randn(T, d, generator=g) for _ in range(L)]

    def check(started):
        got, want = run_bank(bank, x_mid, mlp_out), reference(taps, tcs, REQUESTS, started, x_mid, mlp_out)
        moved = 0
        for layer in range(L):
            torch.testing.assert_close(got[layer], want[layer], rtol=1e-5, atol=1e-5)
            assert torch.equal(got[layer][6:9], mlp_out[layer][6:9])  # the unsteered row
            moved += int((got[layer] != mlp_out[layer]).any(dim=1).sum())
        return moved

    before = check({})
    assert before >= 6  # the interventions change rows of every steered request
    bank.switch_on(2, 0, 8)  # row 2's rule 0 fired: its intervention applies from position 8 on
    assert check({2: {0: 8}}) > 0

    # Requests leave and another steers new features: slots of features nobody steers are reused.
    bank.rows.pop(0), bank.rows.pop(2)  # row 2 was the only one to steer feature 5 of layer 0
    others = [(0, i, "add", 1.0 + i, (), True, True, -1) for i in range(10, 20)]
    bank.rows[0] = bank.request(entries(tcs, others))
    requests = {0: others, 3: REQUESTS[3]}
    got, want = run_bank(bank, x_mid, mlp_out), reference(taps, tcs, requests, {}, x_mid, mlp_out)
    for layer in range(L):
        torch.testing.assert_close(got[layer], want[layer], rtol=1e-5, atol=1e-5)
    assert set(bank.pools[0].slots) == {3, *range(10, 20)} and bank.pools[0].index.numel() == 11  # 5's slot reused


def test_a_step_without_steered_rows_changes_nothing():
    tcs = transcoders("relu")
    spec = MonitorSpec.from_transcoders(tcs, [], request_slots=1, endpoint="inproc://unused")
    L = tcs.n_layers
    taps = TapBank(spec, gains=[torch.ones(tcs.d_model)] * L, eps=[1e-6] * L, device=torch.device("cpu"), max_tokens=64)
    bank = SteerBank(taps)
    bank.rows[7] = bank.request(entries(tcs, REQUESTS[0]))  # a row beyond this step's batch
    x_mid = [torch.randn(QUERY_START[-1], tcs.d_model) for _ in range(L)]
    mlp_out = [torch.randn(QUERY_START[-1], tcs.d_model) for _ in range(L)]
    bank.begin_pass(torch.tensor(POSITIONS), QUERY_START)
    for layer in range(L):
        bank.on_input(layer, x_mid[layer])
        assert bank.on_output(layer, mlp_out[layer]) is mlp_out[layer]  # not even copied
    bank.end_pass()


@pytest.mark.parametrize("kind", ["relu", "clt"])
def test_decode_steps_reuse_the_steady_adds_and_stay_exact(kind, monkeypatch):
    """Decode steps past the prompt (and past a rule's start) keep one mask; adds alone are then
    computed once per plan, and every step still equals the reference, before and after a rule fires."""
    tcs = transcoders(kind)
    spec = MonitorSpec.from_transcoders(tcs, [], request_slots=1, endpoint="inproc://unused")
    g = torch.Generator().manual_seed(6)
    L, d = tcs.n_layers, tcs.d_model
    taps = TapBank(spec, gains=[torch.ones(d)] * L, eps=[1e-6] * L, device=torch.device("cpu"), max_tokens=64)
    taps.gate = None
    bank = SteerBank(taps)
    requests = {
        0: [(0, 3, "add", 2.0, (1,), True, True, -1), (1, 4, "add", -1.0, (), False, True, -1)],  # adds alone
        1: [(0, 3, "scale", 0.5, (), False, True, -1), (2, 7, "add", 1.5, (), False, True, 0)],  # reads a; a rule
    }
    for row, specs in requests.items():
        bank.rows[row] = bank.request(entries(tcs, specs))
    query_start = [0, 1, 2]
    monkeypatch.setattr(sys.modules[__name__], "QUERY_START", query_start)
    started: dict = {}
    kept = []  # per step: the plan (kept alive, so ids stay unique), its adds-alone layers' steady adds
    for step, pos in enumerate(range(N_PROMPT - 1, N_PROMPT + 5)):  # the prompt's last position, then decode
        if step == 3:
            bank.switch_on(1, 0, pos)  # row 1's rule fires: its add applies from this position on
            started = {1: {0: pos}}
        positions = [pos, pos]
        monkeypatch.setattr(sys.modules[__name__], "POSITIONS", positions)
        x_mid = [torch.randn(2, d, generator=g) for _ in range(L)]
        mlp_out = [torch.randn(2, d, generator=g) for _ in range(L)]
        got = run_bank(bank, x_mid, mlp_out, positions, query_start)
        want = reference(taps, tcs, requests, started, x_mid, mlp_out)
        for layer in range(L):
            torch.testing.assert_close(got[layer], want[layer], rtol=1e-5, atol=1e-5)
        plan = bank._plan[1]
        assert all(p.steady == (pos >= N_PROMPT) for _, _, p in plan.layers.values()), step
        adds_alone = [p for _, _, p in plan.layers.values() if not p.reads_a]
        assert adds_alone and all((p.steady_adds is not None) == (pos >= N_PROMPT) for p in adds_alone), step
        kept.append((plan, [id(p.steady_adds[0]) if p.steady_adds else None for p in adds_alone]))
    # steps 1-2 share a plan, and 3-5 another (the rule's firing rebuilt it): the adds were computed once in each
    assert kept[1] == kept[2] and kept[3] == kept[4] == kept[5] and kept[2][0] is not kept[3][0], kept
    assert bank._plan[1].steady_pending is None  # row 1 scales: its layer's deltas read the activations

    # Row 0 alone adds alone on every layer: from its second steady step on, a pass repeats the adds.
    bank.rows.pop(1)
    for pos in range(N_PROMPT + 5, N_PROMPT + 9):
        monkeypatch.setattr(sys.modules[__name__], "POSITIONS", [pos, pos])
        x_mid = [torch.randn(2, d, generator=g) for _ in range(L)]
        mlp_out = [torch.randn(2, d, generator=g) for _ in range(L)]
        got = run_bank(bank, x_mid, mlp_out, [pos, pos], query_start)
        want = reference(taps, tcs, {0: requests[0]}, {}, x_mid, mlp_out)
        for layer in range(L):
            torch.testing.assert_close(got[layer], want[layer], rtol=1e-5, atol=1e-5)
            assert torch.equal(got[layer][1], mlp_out[layer][1])  # row 1 is not steered any more
    assert bank._plan[1].steady_pending is not None
