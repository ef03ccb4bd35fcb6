"""Steering maths on a tiny random Llama with PLT and CLT transcoders (float32)."""

from __future__ import annotations

import pytest
import torch

from circuit_serve.domain.errors import Cancelled, InvalidRequest
from circuit_serve.domain.features import FeatureRef
from circuit_serve.features.steering import Intervention, Op, Sampling, generate, intervened_logits, steer
from circuit_serve.features.target import ModelTarget
from circuit_serve.tracing.architecture import describe
from circuit_serve.tracing.local_model import compute_activations, record

PROMPT = [0, 17, 42, 5, 63, 8, 21, 90]


@pytest.fixture(scope="module")
def target(llama, transcoders, tokenizer):
    return ModelTarget(llama, transcoders, tokenizer)


def graph_activations(llama, transcoders, tokens):
    """(L, P, d_tc) activations as the attribution engine computes them for its graph."""
    rec = record(llama, describe(llama), transcoders, torch.tensor(tokens))
    acts = compute_activations(transcoders, rec)
    dense = torch.zeros(transcoders.n_layers, len(tokens), transcoders.d_transcoder)
    idx = acts.indices
    dense[idx[:, 0], idx[:, 1], idx[:, 2]] = acts.values
    return dense


def most_active(dense, layer, pos):
    return int(dense[layer, pos].argmax())


def test_setting_a_feature_to_its_value_changes_nothing(llama, transcoders, target):
    dense = graph_activations(llama, transcoders, PROMPT)
    interventions = []
    for layer in range(transcoders.n_layers):
        for pos in (2, 5, len(PROMPT) - 1):
            index = most_active(dense, layer, pos)
            assert dense[layer, pos, index] > 0
            interventions.append(
                Intervention(FeatureRef(layer, index), Op.SET, float(dense[layer, pos, index]), positions=(pos,))
            )
    base = intervened_logits(target, PROMPT, (), len(PROMPT))
    same = intervened_logits(target, PROMPT, interventions, len(PROMPT))
    assert (same - base).abs().max() < 1e-5

    sampling = Sampling(max_new_tokens=8)
    steps_base, steps_same = [], []
    a = generate(target, PROMPT, (), sampling, on_logits=steps_base.append)
    b = generate(target, PROMPT, interventions, sampling, on_logits=steps_same.append)
    assert a.token_ids == b.token_ids and len(a.token_ids) == 8
    assert max(float((x - y).abs().max()) for x, y in zip(steps_base, steps_same)) < 1e-5


def test_clamping_to_zero_matches_a_direct_computation(llama, transcoders, target):
    """Expected logits: the test's own hooks subtract a * W_dec at the MLP outputs it writes to."""
    layer, pos = 0, 4
    dense = graph_activations(llama, transcoders, PROMPT)
    index = most_active(dense, layer, pos)
    got = intervened_logits(target, PROMPT, [Intervention(FeatureRef(layer, index), Op.SET, 0.0, (pos,))], len(PROMPT))

    dec = transcoders.W_dec[layer][index]  # PLT (d,), CLT (L - layer, d)
    dec = dec[None] if dec.ndim == 1 else dec
    live: dict[str, torch.Tensor] = {}

    def mlp_hook(li):
        def fn(module, args, out):
            if li == layer:  # the MLP input is the transcoder input (mlp.hook_in)
                x = args[0][0, pos]
                live["a"] = torch.relu(x @ transcoders.W_enc[layer][index] + transcoders.b_enc[layer][index])
            k = li - layer
            if 0 <= k < dec.shape[0]:
                out = out.clone()
                out[0, pos] -= live["a"] * dec[k]
            return out

        return fn

    handles = [llama.model.layers[li].mlp.register_forward_hook(mlp_hook(li)) for li in range(transcoders.n_layers)]
    try:
        with torch.inference_mode():
            want = llama(input_ids=torch.tensor([PROMPT]), use_cache=False).logits[0]
    finally:
        for h in handles:
            h.remove()
    with torch.inference_mode():
        base = llama(input_ids=torch.tensor([PROMPT]), use_cache=False).logits[0]
    assert float(live["a"]) == pytest.approx(float(dense[layer, pos, index]), abs=1e-5)
    assert (want - base).abs().max() > 1e-3  # the clamp matters
    assert (got - want).abs().max() < 1e-5
    assert (got[:pos] - base[:pos]).abs().max() < 1e-5  # causal: nothing before the position moves


def test_generated_token_interventions(target):
    sampling = Sampling(max_new_tokens=6)
    default = generate(target, PROMPT, (), sampling)
    feature = FeatureRef(1, 3)
    unchanged = generate(target, PROMPT, [Intervention(feature, Op.SCALE, 1.0, generated=True)], sampling)
    assert unchanged.token_ids == default.token_ids
    pushed = steer(
        target,
        PROMPT,
        [Intervention(feature, Op.ADD, 50.0, generated=True, positions=(7,))],
        sampling,
        with_default=True,
    )
    assert pushed.default == default
    assert pushed.steered.token_ids != default.token_ids


def test_a_caller_that_left_stops_generation(target):
    polls = []

    def should_stop():
        polls.append(1)
        return len(polls) > 2

    with pytest.raises(Cancelled):
        generate(target, PROMPT, (), Sampling(max_new_tokens=10), should_stop=should_stop)
    assert len(polls) == 3


def test_seeded_sampling_is_reproducible(target):
    s = Sampling(max_new_tokens=6, temperature=1.0, seed=7)
    iv = [Intervention(FeatureRef(0, 1), Op.SCALE, 2.0, positions=(3,))]
    assert steer(target, PROMPT, iv, s) == steer(target, PROMPT, iv, s)


@pytest.mark.parametrize(
    ("iv", "message"),
    [
        (
            Intervention(FeatureRef(0, 1), Op.SET, 0.0, positions=(8,)),
            "interventions[0].positions: position 8 is beyond",
        ),
        (Intervention(FeatureRef(3, 1), Op.SET, 0.0, positions=(1,)), "layer 3 does not exist; layers are 0..2"),
        (Intervention(FeatureRef(0, 48), Op.SET, 0.0, positions=(1,)), "index 48 does not exist"),
        (Intervention(FeatureRef(0, 1), Op.SET, 0.0), "set positions"),
        (Intervention(FeatureRef(0, 1), Op.SET, float("nan"), positions=(1,)), "finite"),
        (
            Intervention(FeatureRef(0, 1), Op.ADD, 3e38, positions=(1,)),
            "finite number within",
        ),  # overflows the residual
    ],
)
def test_bad_interventions(target, iv, message):
    with pytest.raises(InvalidRequest, match=message.replace("[", r"\[").replace("]", r"\]")):
        steer(target, PROMPT, [iv], Sampling())


def test_all_prompt_positions_is_every_position(target):
    f = FeatureRef(2, 4)
    every = intervened_logits(target, PROMPT, [Intervention(f, Op.SCALE, 3.0, all_prompt=True)], len(PROMPT))
    listed = intervened_logits(target, PROMPT, [Intervention(f, Op.SCALE, 3.0, tuple(range(len(PROMPT))))], len(PROMPT))
    assert torch.equal(every, listed)


@pytest.mark.parametrize(
    ("arch", "kind", "input_hook", "output_hook"),
    [
        ("llama", "plt", "hook_resid_mid", "mlp.hook_out"),
        ("gemma2", "plt", "mlp.hook_in", "hook_mlp_out"),
        ("gemma2", "clt", "hook_resid_mid", "mlp.hook_out"),
    ],
)
def test_clamping_across_architectures_and_hooks(tokenizer, arch, kind, input_hook, output_hook):
    """Independent hooks: read x_in where the config says (MLP input, or the residual stream before
    the pre-MLP norm) and subtract a * W_dec where it says (MLP output, or after Gemma-2's norm)."""
    from tests.features.tiny import tiny_gemma2, tiny_llama, tiny_transcoders

    model = tiny_gemma2() if arch == "gemma2" else tiny_llama()
    tcs = tiny_transcoders(kind, input_hook=input_hook, output_hook=output_hook)
    target = ModelTarget(model, tcs, tokenizer)
    layer, pos = 0, 5
    arch_ = describe(model)
    live: dict[str, torch.Tensor] = {}

    def read_x(module, args, kwargs=None):
        live["x"] = args[0][0, pos]

    read_at = arch_.layers[layer].mlp if input_hook == "mlp.hook_in" else arch_.layers[layer].norm2
    handle = read_at.register_forward_pre_hook(read_x)
    with torch.inference_mode():
        base = model(input_ids=torch.tensor([PROMPT]), use_cache=False).logits[0]
    handle.remove()
    acts = torch.relu(live["x"] @ tcs.W_enc[layer].T + tcs.b_enc[layer])  # (d_tc,)
    index = int(acts.argmax())
    a = acts[index]
    dec = tcs.W_dec[layer][index]
    dec = dec[None] if dec.ndim == 1 else dec  # (n_out, d)

    def subtract(li):
        def fn(module, args, out):
            k = li - layer
            if 0 <= k < dec.shape[0]:
                out = out.clone()
                out[0, pos] -= a * dec[k]
            return out

        return fn

    after_norm = arch == "gemma2" and output_hook == "hook_mlp_out"
    handles = [
        (part.norm_pf if after_norm else part.mlp).register_forward_hook(subtract(li))
        for li, part in enumerate(arch_.layers)
    ]
    with torch.inference_mode():
        want = model(input_ids=torch.tensor([PROMPT]), use_cache=False).logits[0]
    for h in handles:
        h.remove()
    got = intervened_logits(target, PROMPT, [Intervention(FeatureRef(layer, index), Op.SET, 0.0, (pos,))], len(PROMPT))
    assert a > 0 and (want - base).abs().max() > 1e-3
    assert (got - want).abs().max() < 1e-5
