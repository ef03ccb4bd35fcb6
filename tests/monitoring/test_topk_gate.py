"""The TopK taps' sentinel gate (monitoring/topk_gate.py) changes no value, and spares the full row.

On the trained demo model and its TopK transcoders (k = 4 of 1,024 per layer, read at
hook_resid_mid), the transcoder inputs the tracing engine records for ~4,800 tokens of text are fed
to two tap banks of the same watchlist in engine-step-sized chunks: one gated (the CPU default),
one with the gate off (the full row for every token). Before and after the warm-up, with request
columns lent after it, and with the layer's most frequent features watched too, both banks must
give the same pre-activations and active masks, and those masks must be the tracing engine's
(`TranscoderSet.activate`). After the warm-up, most tokens must skip the full row.
"""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoTokenizer

from circuit_serve.demo import build_demo_model
from circuit_serve.domain.features import FeatureRef
from circuit_serve.monitoring.spec import MonitorSpec
from circuit_serve.monitoring.taps import TapBank
from circuit_serve.monitoring.topk_gate import WARMUP_TOKENS
from circuit_serve.tracing import ReplacementModel

CHUNKS = [256, 16, 48, 128, 16, 300, 41, 16]  # prefill chunks and decode-sized steps, repeated


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """The demo's replacement model and its recorded transcoder inputs: L x (T, d) for 12 prompts."""
    model_dir = build_demo_model(tmp_path_factory.mktemp("demo"))
    rm = ReplacementModel.from_pretrained(model_dir, model_dir / "transcoders", dtype="float32", device="cpu")
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    words = sorted(w for w in tok.get_vocab() if w.isalpha() and len(w) > 2)[:300]
    rng = random.Random(7)
    x_in: list[list[torch.Tensor]] = [[] for _ in range(rm.transcoders.n_layers)]
    with torch.inference_mode():
        for _ in range(12):
            ids = tok.encode(" ".join(rng.choice(words) for _ in range(400)))[:400]
            rec = rm.record(torch.tensor(ids))
            for layer, x in enumerate(rec.x_in):
                x_in[layer].append(x[1:].float())  # BOS apart, as the monitor zeroes it
    return rm.transcoders, [torch.cat(xs) for xs in x_in]


def banks(tcs, server: list[FeatureRef]) -> tuple[TapBank, TapBank]:
    spec = MonitorSpec.from_transcoders(tcs, server, request_slots=2, endpoint="inproc://unused")
    gains = [torch.ones(tcs.d_model)] * tcs.n_layers
    eps = [1e-6] * tcs.n_layers
    gated, whole = (TapBank(spec, gains=gains, eps=eps, device=torch.device("cpu"), max_tokens=512) for _ in "ab")
    assert gated.gate is not None and spec.read_point == "hook_resid_mid"
    whole.gate = None
    return gated, whole


@pytest.mark.parametrize("watch", ["spread", "spread+frequent"])
def test_gated_taps_equal_the_full_row_and_the_tracing_engine(recorded, watch):
    tcs, x_in = recorded
    L, F, T = tcs.n_layers, tcs.d_transcoder, x_in[0].shape[0]
    assert tcs.activation == "topk" and T > 2 * WARMUP_TOKENS
    # 32 features spread over the layers (as bench/monitoring.py watches); or those plus each
    # layer's two most frequent top-k features, which fire on many tokens (each such token takes
    # the full row) and are likely sentinels themselves.
    server = [FeatureRef(i % L, (97 * i + 5) % F) for i in range(32)]
    if watch == "spread+frequent":
        for layer in range(L):
            pre = tcs.pre_activations(layer, x_in[layer][:500])
            frequent = torch.bincount(pre.topk(tcs.top_k, -1).indices.flatten(), minlength=F).topk(2).indices
            server += [FeatureRef(layer, int(i)) for i in frequent]
    gated, whole = banks(tcs, server)
    plan = gated.plan

    at, step, lent, compared = 0, 0, False, 0
    while at < T:
        n = min(CHUNKS[step % len(CHUNKS)], T - at)
        if not lent and at > WARMUP_TOKENS + 500:  # a request lends a column of every layer after warm-up
            for bank in (gated, whole):
                for layer in range(L):
                    bank.set_column(plan.slot_column(layer, 0), layer, (13 * layer + 1) % F, None, 0.0, 0.0)
            lent = True
        for bank in (gated, whole):
            bank.enabled = True
            for layer in range(L):
                bank.tap(layer, x_in[layer][at : at + n])
            bank.finish_pass()  # as the model's forward ends: decode-sized steps' rows, all layers at once
        for layer in range(L):
            lo, hi = plan.offset(layer), plan.offset(layer + 1)
            used = gated.in_use[lo:hi]
            g_pre, w_pre = gated.pre[layer][:n][:, used], whole.pre[layer][:n][:, used]
            g_act, w_act = gated.active[layer][:n][:, used], whole.active[layer][:n][:, used]
            assert torch.allclose(g_pre, w_pre, rtol=1e-5, atol=1e-5 * float(w_pre.abs().max()))
            assert torch.equal(g_act, w_act), (layer, at)
            # the tracing engine's own activation of the same inputs
            act = tcs.activate(layer, tcs.pre_activations(layer, x_in[layer][at : at + n])) != 0  # (n, F)
            assert torch.equal(w_act, act[:, gated.index[lo:hi][used]])
            compared += int(w_act.sum())
        at, step = at + n, step + 1

    assert lent and compared > 0
    assert all(s is not None for s in gated.gate.sentinels)  # warmed up on every layer
    share = gated.gate.whole / gated.gate.tokens
    print(f"{watch}: {share:.3f} of the tokens after warm-up took the full row")
    if watch == "spread":  # most tokens skip the full row (the point of the gate)
        assert share < 0.15, share


def test_both_encoder_layouts_give_the_same_taps(recorded, monkeypatch):
    """The bank keeps each TopK encoder as a transposed copy or a transposed view, whichever this
    machine multiplies faster (`transposed_copy_is_faster`): either one, gated or not, gives the
    same values and masks as the tracing engine."""
    from circuit_serve.monitoring import taps as taps_module

    tcs, x_in = recorded
    L, F = tcs.n_layers, tcs.d_transcoder
    server = [FeatureRef(i % L, (97 * i + 5) % F) for i in range(32)]
    made = {}
    for copy in (True, False):
        monkeypatch.setattr(taps_module, "transposed_copy_is_faster", lambda w, copy=copy: copy)
        made[copy] = banks(tcs, server)
        assert made[copy][0].enc_t[0][0].is_contiguous() == copy
    x = [xs[: WARMUP_TOKENS + 300] for xs in x_in]  # past the warm-up: the gated banks use their gate
    for layer in range(L):
        for bank in (b for pair in made.values() for b in pair):
            bank.enabled = True
            for at in range(0, x[layer].shape[0], 128):
                bank.tap(layer, x[layer][at : at + 128])
                bank.finish_pass()  # the last step is decode-sized: its row comes from finish_pass
        plan = made[True][0].plan
        lo, hi = plan.offset(layer), plan.offset(layer + 1)
        n = x[layer].shape[0] - (x[layer].shape[0] - 1) // 128 * 128  # the last step's rows
        act = tcs.activate(layer, tcs.pre_activations(layer, x[layer][-n:])) != 0
        want = act[:, made[True][0].index[lo:hi]]
        pres = [b.pre[layer][:n] for pair in made.values() for b in pair]
        for bank in (b for pair in made.values() for b in pair):
            assert torch.equal(bank.active[layer][:n], want), layer
        for pre in pres[1:]:
            assert torch.allclose(pre, pres[0], rtol=1e-5, atol=1e-5 * float(pres[0].abs().max()))
    assert all(pair[0].gate.tokens > 0 for pair in made.values())
