"""Conditional steering: a watch rule with action `steer` switches its interventions on inside
vLLM when its feature first fires, with vLLM's engine core in its own process (float32, greedy).

On the monitoring tests' Llama with a ReLU transcoder (tests/monitoring/test_exactness.build),
with an intervention that changes the greedy completion (ADD on a last-layer feature at
generated tokens, see test_exactness.interventions):

- a rule whose feature first fires at generated position q (chosen on the replacement model's
  unsteered completion, with a margin on both sides of its threshold) starts the intervention
  at q + 1: the completion's tokens up to q + 1 are the unsteered ones, and its tail equals an
  unconditional request on prompt + the completion's tokens up to q (the intervention on every
  generated token, i.e. from position q + 1), which equals the replacement model's steering;
  the report's `steered_from` is q + 1 and the rule fired first at completion position q - P;
- a rule whose feature first fires at a prompt position steers from the first position after
  the prompt's prefill step (P here: the CPU build prefills a prompt in one step), so the
  completion equals the unconditional request with the intervention on generated tokens;
- a rule that never fires changes nothing: the ids and the report equal those of a `record`
  rule on the same feature, and `steered_from` is unset;
- the same requests at once (sharing the batch) give what they gave alone;
- the steering is not vacuous: the conditional completion differs from the unsteered one.
"""

from __future__ import annotations

import asyncio
import dataclasses

import torch

from circuit_serve.domain.features import Action, FeatureRef, WatchedFeature, WatchRequest
from circuit_serve.domain.generation import GenerationRequest, SamplingOptions
from circuit_serve.features.target import ModelTarget
from circuit_serve.generation.engine import GenerationEngine
from circuit_serve.monitoring.monitor import EngineMonitor
from circuit_serve.tracing import ReplacementModel
from tests.monitoring.test_exactness import PROMPTS, build, engine_config
from tests.steering_vllm.test_exactness import interventions, reference

N_NEW = 8  # as reference() generates
CASE = "llama-plt-relu-skip"


def activations(rm: ReplacementModel, ids: list[int]) -> list[torch.Tensor]:
    """The replacement model's `(T, F)` feature activations per layer, BOS zeroed (as monitoring does)."""
    tcs = rm.transcoders
    with torch.inference_mode():
        rec = rm.record(torch.tensor(ids))
        acts = [tcs.encode(layer, x).float() for layer, x in enumerate(rec.x_in)]
        for a in acts:
            a[0] = 0
    return acts


def first_fires_at(acts: list[torch.Tensor], q: int) -> tuple[FeatureRef, float] | None:
    """A feature (and threshold) whose activation first passes the threshold at position `q`,
    with a margin of a fifth of its jump on both sides; None when no feature jumps there."""
    best = None
    for layer, a in enumerate(acts):
        before = a[:q].max(0).values  # (F,)
        gap = a[q] - before  # (F,)
        f = int(gap.argmax())
        if gap[f] > 0.05 and (best is None or gap[f] > best[2]):
            best = (FeatureRef(layer, f), float(before[f] + gap[f] / 2), float(gap[f]))
    return None if best is None else best[:2]


def test_steer_rule_starts_its_intervention_after_the_firing_token(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # engine core in its own process
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    model_dir, tc_dir = build(CASE, tmp_path)
    rm = ReplacementModel.from_pretrained(model_dir, tc_dir, dtype="float32", device="cpu")
    target = ModelTarget.of(rm)
    target.eos_token_ids = set  # vLLM runs with ignore_eos
    iv = interventions(rm)[2][0]  # ADD on a last-layer feature at every generated token
    assert iv.generated and not iv.positions and not iv.all_prompt
    prompt = PROMPTS[0]
    P = len(prompt)

    # 1. The unsteered completion and a feature that first fires at one of its early positions.
    plain = reference(target, prompt, ())[0][:N_NEW]
    acts = activations(rm, prompt + plain)
    found = next((q, hit) for q in range(P + 1, P + 5) if (hit := first_fires_at(acts, q)) is not None)
    q, (feature, threshold) = found
    k = q - P + 1  # tokens up to and including the firing one
    in_prompt = max(range(P), key=lambda p: float(max(a[p].max() for a in acts)))
    layer = max(range(len(acts)), key=lambda layer: float(acts[layer][in_prompt].max()))
    prompt_feature = FeatureRef(layer, int(acts[layer][in_prompt].argmax()))
    prompt_threshold = float(acts[layer][in_prompt].max()) / 2

    server = (WatchedFeature("w", FeatureRef(0, 0), 0.0, Action.RECORD),)
    monitor = EngineMonitor(
        rm.transcoders, server, model_type=rm.arch.model_type, request_slots=2, max_request_watch=2, work_dir=tmp_path
    )
    engine = GenerationEngine(engine_config(model_dir))

    def request(ids, n_new, *, ivs=(), rule=None):
        greedy = SamplingOptions(max_new_tokens=n_new, temperature=0.0, ignore_eos=True)
        watch = None if rule is None else WatchRequest((*server, rule), n_server=1)
        return GenerationRequest(prompt_token_ids=tuple(ids), sampling=greedy, interventions=tuple(ivs), watch=watch)

    steer = WatchedFeature("t", feature, threshold, Action.STEER, steer=(iv,))
    steer_in_prompt = WatchedFeature("p", prompt_feature, prompt_threshold, Action.STEER, steer=(iv,))
    never = WatchedFeature("n", feature, 1e6, Action.STEER, steer=(iv,))
    record = dataclasses.replace(never, action=Action.RECORD, steer=())
    requests = [
        request(prompt, N_NEW, rule=steer),  # fires at q
        request(prompt + plain[:k], N_NEW - k, ivs=(iv,)),  # unconditional from q + 1
        request(prompt, N_NEW, rule=steer_in_prompt),  # fires in the prompt
        request(prompt, N_NEW, ivs=(iv,)),  # unconditional from P
        request(prompt, N_NEW, rule=never),
        request(prompt, N_NEW, rule=record),
    ]

    async def run():
        await engine.start(monitor)
        alone = [await engine.generate(r) for r in requests]
        together = await asyncio.gather(*(engine.generate(r) for r in requests))
        return alone, together

    try:
        alone, together = asyncio.run(run())
    finally:
        engine.shutdown()

    conditional, tail, in_prompt_result, from_prompt, never_result, record_result = alone
    ids = list(conditional.token_ids)
    assert ids[: k + 1] == plain[: k + 1]  # the token after the firing one is sampled before any steering
    assert ids[k:] == list(tail.token_ids)
    assert list(tail.token_ids) == reference(target, prompt + plain[:k], (iv,))[0][: N_NEW - k]
    assert ids != plain  # not vacuous
    report = {r.watched.name: r for r in conditional.monitor.features}["t"]
    assert report.completion_positions[0] == q - P and not report.prompt_positions
    assert report.steered_from == q + 1
    assert not conditional.monitor.flagged  # steer is not a flag

    report = {r.watched.name: r for r in in_prompt_result.monitor.features}["p"]
    assert report.prompt_positions and report.steered_from == P
    assert list(in_prompt_result.token_ids) == list(from_prompt.token_ids)

    assert list(never_result.token_ids) == list(record_result.token_ids) == plain
    never_report = {r.watched.name: r for r in never_result.monitor.features}["n"]
    record_report = {r.watched.name: r for r in record_result.monitor.features}["n"]
    assert never_report.steered_from is None and not never_report.fired
    assert (never_report.max_activation, never_report.completion_positions) == (
        record_report.max_activation,
        record_report.completion_positions,
    )

    for a, b in zip(alone, together, strict=True):
        assert list(a.token_ids) == list(b.token_ids)
        if a.monitor is not None:
            assert [r.steered_from for r in a.monitor.features] == [r.steered_from for r in b.monitor.features]
    print(f"{CASE}: fires at q={q} (P={P}), steered ids {ids} vs unsteered {plain}")
