"""Steering inside vLLM equals the replacement model's steering (features/steering.py), with
vLLM's engine core in its own process.

For each case (Llama, Gemma-2 at both output hooks, Qwen3; PLT ReLU at hook_resid_mid, PLT
JumpReLU at GemmaScope's ln2.hook_normalized, PLT TopK at mlp.hook_in, CLTs; the monitoring
tests' models and transcoders, tests/monitoring/test_exactness.build), float32, greedy:

- each steered request (set / scale / add at listed prompt positions, every prompt position and
  every generated token; two ops stacked on one feature) run alone gives the token ids of
  `steering.generate` on the replacement model, and at every step the log-probabilities of its
  top 5 tokens agree with the reference's within 1e-4 x their largest magnitude;
- the same requests at once, plus an unsteered one and a steered one that is also monitored,
  each give what they gave alone; the unsteered one gives the reference's unsteered ids;
- every request's interventions move its reference log-probabilities by more than 0.1 (the
  comparison is not vacuous; the check can fail);
- `Steer` through the features service with this engine (`FeaturesService.steer`, all calls at
  once) runs on vLLM and answers the replacement path's steered and default ids; a call beyond
  vLLM's max_model_len runs on the replacement model (its counter says which).
"""

from __future__ import annotations

import asyncio

import pytest
import torch
from prometheus_client import CollectorRegistry

from circuit_serve.attribution.loading import Replacement
from circuit_serve.config.features import FeaturesConfig
from circuit_serve.domain.features import Action, FeatureRef, Intervention, Op, WatchedFeature, WatchRequest
from circuit_serve.domain.generation import GenerationRequest, SamplingOptions
from circuit_serve.features import steering
from circuit_serve.features.engine import SteerQuery, TokensInput
from circuit_serve.features.service import FeaturesService
from circuit_serve.features.target import ModelTarget
from circuit_serve.generation.engine import GenerationEngine
from circuit_serve.monitoring.monitor import EngineMonitor
from circuit_serve.tracing import ReplacementModel
from tests.monitoring.test_exactness import PROMPTS, build, engine_config

TOL = 1e-4
N_NEW = 8
TOP = 5


def interventions(rm: ReplacementModel) -> list[tuple[Intervention, ...]]:
    """One request's interventions per entry, on features active in the first prompt (so that
    changing them matters): set, scale, add, and stacked ops. Values are in units that make the
    decoder write about the residual stream's size (Gemma-2's residual is sqrt(d) x larger)."""
    tcs = rm.transcoders
    L = tcs.n_layers
    with torch.inference_mode():
        rec = rm.record(torch.tensor(PROMPTS[0]))
        acts = [tcs.encode(layer, x).float() for layer, x in enumerate(rec.x_in)]  # (P, F) each
    residual = float(rec.x0[1:].norm(dim=-1).mean())

    def unit(f: FeatureRef) -> float:
        return residual / float(tcs.decoder_rows(f.layer, torch.tensor([f.index]))[0, 0].norm())

    top = [int(a[1:].sum(0).argmax()) for a in acts]  # the most active feature of each layer
    f0, f1, fl = FeatureRef(0, top[0]), FeatureRef(1, top[1]), FeatureRef(L - 1, top[L - 1])
    other = FeatureRef(1, (top[1] + 1) % tcs.d_transcoder)
    return [
        (Intervention(f1, Op.SET, 2.0 * unit(f1), positions=(3, 7), generated=True),),
        (Intervention(f0, Op.SCALE, -4.0, all_prompt=True),),
        (Intervention(fl, Op.ADD, 2.0 * unit(fl), generated=True),),
        (
            Intervention(f0, Op.SCALE, 0.0, positions=(2, 5, 9)),
            Intervention(f0, Op.ADD, 2.0 * unit(f0), positions=(5,), generated=True),
            Intervention(other, Op.SET, 2.0 * unit(other), all_prompt=True),
        ),
    ]


def reference(target: ModelTarget, prompt: list[int], ivs) -> tuple[list[int], list[torch.Tensor]]:
    """Replacement-model steering: greedy ids and each step's `(vocab,)` log-probabilities."""
    steps: list[torch.Tensor] = []
    out = steering.generate(
        target,
        prompt,
        ivs,
        steering.Sampling(max_new_tokens=N_NEW),
        on_logits=lambda logits: steps.append(torch.log_softmax(logits.float(), -1)),
    )
    return list(out.token_ids), steps


def check_logprobs(result, want: list[torch.Tensor], case: str) -> float:
    """vLLM's top-5 logprobs at every step against the reference's; returns the worst relative diff."""
    worst = 0.0
    assert len(result.logprobs) == len(want)
    for step, ref in zip(result.logprobs, want):
        ids = torch.tensor([tid for tid, _tok, _lp in step.top])
        got = torch.tensor([lp for _tid, _tok, lp in step.top])
        assert len(ids) == TOP
        expect = ref[ids]
        scale = float(expect.abs().max())
        diff = float((got - expect).abs().max())
        assert diff <= TOL * scale, (case, diff, scale)
        worst = max(worst, diff / scale)
    return worst


@pytest.mark.parametrize(
    "case", ["llama-plt-relu-skip", "gemma2-plt-jumprelu", "qwen3-plt-topk", "llama-clt-relu", "gemma2-clt-jumprelu"]
)
def test_steered_generate_equals_replacement_model_steering(case, tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # engine core in its own process
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    model_dir, tc_dir = build(case, tmp_path)
    rm = ReplacementModel.from_pretrained(model_dir, tc_dir, dtype="float32", device="cpu")
    target = ModelTarget.of(rm)
    target.eos_token_ids = set  # vLLM runs with ignore_eos: both generate N_NEW tokens
    sets = interventions(rm)
    prompts = [PROMPTS[k % len(PROMPTS)] for k in range(len(sets))]
    want = [reference(target, p, ivs) for p, ivs in zip(prompts, sets)]
    plain = reference(target, PROMPTS[1], ())

    server = (WatchedFeature("w", FeatureRef(0, 0), 0.0, Action.RECORD),)
    monitor = EngineMonitor(
        rm.transcoders, server, model_type=rm.arch.model_type, request_slots=2, max_request_watch=2, work_dir=tmp_path
    )
    engine = GenerationEngine(engine_config(model_dir))
    greedy = SamplingOptions(max_new_tokens=N_NEW, temperature=0.0, ignore_eos=True, top_logprobs=TOP)

    def request(prompt, ivs=(), watch=None):
        return GenerationRequest(prompt_token_ids=tuple(prompt), sampling=greedy, interventions=tuple(ivs), watch=watch)

    service = FeaturesService(
        FeaturesConfig(), CollectorRegistry(), replacement=Replacement(model=rm), generation=engine
    )
    queries = [
        SteerQuery(TokensInput(token_ids=tuple(p)), ivs, steering.Sampling(max_new_tokens=N_NEW), with_default=True)
        for p, ivs in zip(prompts, sets)
    ]
    beyond = SteerQuery(TokensInput(token_ids=tuple(prompts[0])), sets[0], steering.Sampling(max_new_tokens=64))

    async def run():
        await engine.start(monitor)
        await service.start()
        alone = [await engine.generate(request(p, ivs)) for p, ivs in zip(prompts, sets)]
        watched = WatchRequest(server, n_server=1)
        together = await asyncio.gather(
            engine.generate(request(PROMPTS[1])),  # unsteered, sharing the batch
            engine.generate(request(prompts[0], sets[0], watch=watched)),  # steered and monitored
            *(engine.generate(request(p, ivs)) for p, ivs in zip(prompts, sets)),
            *(engine.generate(request(p, ivs)) for p, ivs in zip(prompts, sets)),
        )
        steered = await asyncio.gather(*(service.steer(q) for q in queries))  # on vLLM, all at once
        return alone, together, steered, await service.steer(beyond)  # prompt + 64 > max_model_len 64

    try:
        alone, together, steered, fallback = asyncio.run(run())
    finally:
        engine.shutdown()

    worst = 0.0
    for result, (ids, steps) in zip(alone, want):
        assert list(result.token_ids) == ids, case
        worst = max(worst, check_logprobs(result, steps, case))
    unsteered, monitored, *rest = together
    assert list(unsteered.token_ids) == plain[0], case
    check_logprobs(unsteered, plain[1], case)
    assert list(monitored.token_ids) == want[0][0] and monitored.monitor is not None, case
    for k, result in enumerate(rest):
        assert list(result.token_ids) == list(alone[k % len(sets)].token_ids), (case, k)
        worst = max(worst, check_logprobs(result, want[k % len(sets)][1], case))
    for q, got in zip(queries, steered):  # Steer on vLLM answers the replacement path's steering
        want_steer = service.engine.steer(q, list(q.input.token_ids))
        assert got.steered.token_ids == want_steer.steered.token_ids, case
        assert got.default.token_ids == want_steer.default.token_ids, case
    assert fallback.steered.token_ids == service.engine.steer(beyond, prompts[0]).steered.token_ids
    calls = {
        e: service.registry.get_sample_value("circuit_steer_requests_total", {"engine": e})
        for e in ("vllm", "replacement")
    }
    assert calls == {"vllm": len(queries), "replacement": 1}, calls
    # Not vacuous: every request's interventions move its reference distributions (the ids may
    # stay: the tiny Gemma-2 models keep their greedy token under every intervention tried).
    moved, changed = [], []
    for p, (ids, steps) in zip(prompts, want):
        base_ids, base = reference(target, p, ())
        moved.append(max(float((a - b).abs().max()) for a, b in zip(steps, base)))
        changed.append(ids != base_ids)
    assert min(moved) > 0.1, (case, moved)
    print(
        f"{case}: worst relative top-{TOP} logprob diff {worst:.2e}; steering moved logprobs by {moved}; ids changed {changed}"
    )
