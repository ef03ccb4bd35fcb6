"""In-engine watched features equal the attribution engine's, on every supported architecture,
read point and transcoder kind, with vLLM's engine core in its own process.

For each case: a tiny random model (Llama, Gemma-2 or Qwen3, head size 32 for vLLM's CPU
attention) and transcoders in the on-disk format (tests/tracing's writer: PLT ReLU at
hook_resid_mid, PLT JumpReLU at GemmaScope's ln2.hook_normalized, PLT TopK at mlp.hook_in, CLTs);
every feature of every layer is watched (the server watchlist) and each request adds rules of
its own (the lent-column path). Three greedy requests share a prompt prefix with prefix caching
on (one unmonitored request warms the cache first). For every position of prompt + completion,
the engine's pre-activations must equal `TranscoderSet.pre_activations` of the tracing engine's
recorded inputs within 1e-4 x the largest magnitude, and the active masks must agree except
within that tolerance of the threshold (ReLU: 0; JumpReLU: its threshold; TopK: 0 or the k-th
value); position 0 (BOS) has no active feature.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from circuit_serve.config.serve import EngineConfig
from circuit_serve.domain.features import Action, FeatureRef, WatchedFeature, WatchRequest
from circuit_serve.domain.generation import GenerationRequest, SamplingOptions
from circuit_serve.generation.engine import GenerationEngine
from circuit_serve.monitoring.monitor import EngineMonitor
from circuit_serve.tracing import ReplacementModel
from tests.tracing.tracing_helpers import CASES, PROMPT_IDS, build_model, tiny_tokenizer, write_transcoders

TOL = 1e-4
VOCAB = 96
N_NEW = 8
PROMPTS = [  # BOS first; the three share their first 10 tokens (PROMPT_IDS)
    PROMPT_IDS + [12, 77, 5],
    PROMPT_IDS + [12, 40, 9, 33],
    PROMPT_IDS + [88],
]


def build(case: str, root: Path) -> tuple[Path, Path]:
    arch = CASES[case][0]
    model = build_model(arch, seed=3, vocab=VOCAB, d=128, layers=3)
    model_dir = root / "model"
    model.save_pretrained(model_dir, safe_serialization=True)
    tiny_tokenizer(VOCAB).save_pretrained(model_dir)
    tc_dir = write_transcoders(root / "tc", model, case, torch.tensor(PROMPTS[0]), d_tc=64, seed=5)
    return model_dir, tc_dir


def engine_config(model_dir: Path, *, max_model_len: int = 64, **extra) -> EngineConfig:
    """float32, eager, prefix caching on (plus `extra` engine arguments)."""
    return EngineConfig(
        model=model_dir,
        dtype="float32",
        max_model_len=max_model_len,
        enforce_eager=True,
        kv_cache_gib=0.5,
        extra={"enable_prefix_caching": True, **extra},
    )


def expected(rm: ReplacementModel, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tracing engine: `(T, L, F)` pre-activations, active masks, and each pre-activation's distance
    to the nearest edge of its mask (threshold, 0, or the k-th value)."""
    tcs = rm.transcoders
    with torch.inference_mode():
        rec = rm.record(torch.tensor(ids))
        pre = torch.stack([tcs.pre_activations(layer, x).float() for layer, x in enumerate(rec.x_in)], 1)
        active = torch.stack([tcs.activate(layer, pre[:, layer]) != 0 for layer in range(tcs.n_layers)], 1)
    if tcs.activation == "jumprelu":
        margin = (pre - torch.stack(tcs.threshold).float()).abs()
    elif tcs.activation == "topk":
        kth = pre.topk(tcs.top_k, dim=-1).values[..., -1:]
        margin = torch.minimum((pre - kth).abs(), pre.abs())
    else:
        margin = pre.abs()
    return pre, active, margin


@pytest.mark.parametrize(
    "case", ["llama-plt-relu-skip", "gemma2-plt-jumprelu", "qwen3-plt-topk", "llama-clt-relu", "gemma2-clt-jumprelu"]
)
def test_in_engine_values_equal_the_tracing_engine(case, tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # engine core in its own process
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    model_dir, tc_dir = build(case, tmp_path)
    rm = ReplacementModel.from_pretrained(model_dir, tc_dir, dtype="float32", device="cpu")
    L, F = rm.transcoders.n_layers, rm.transcoders.d_transcoder
    server = tuple(
        WatchedFeature(f"f{layer}-{i}", FeatureRef(layer, i), 1e9, Action.RECORD)
        for layer in range(L)
        for i in range(F)
    )
    monitor = EngineMonitor(
        rm.transcoders, server, model_type=rm.arch.model_type, request_slots=4, max_request_watch=4, work_dir=tmp_path
    )
    seen: dict[str, object] = {}
    close = monitor.channel.close
    monitor.channel.close = lambda rid: (seen.__setitem__(rid, monitor.channel._requests.get(rid)), close(rid))[1]

    engine = GenerationEngine(engine_config(model_dir))

    async def run():
        await engine.start(monitor)
        greedy = SamplingOptions(max_new_tokens=N_NEW, temperature=0.0, ignore_eos=True)
        await engine.generate(GenerationRequest(prompt_token_ids=tuple(PROMPTS[0]), sampling=greedy))  # warm the cache
        results = []
        for prompts in [PROMPTS[:1], PROMPTS[1:]]:  # one alone, then two at once
            reqs = []
            for p in prompts:
                own = tuple(
                    WatchedFeature(f"own-{len(p)}-{k}", FeatureRef(k % L, (7 * k + len(p)) % F), 0.0, Action.RECORD)
                    for k in range(3)
                )
                reqs.append(
                    GenerationRequest(
                        prompt_token_ids=tuple(p),
                        sampling=greedy,
                        watch=WatchRequest((*server, *own), n_server=len(server)),
                    )
                )
            results += await asyncio.gather(*(engine.generate(r) for r in reqs))
        return results

    try:
        results = asyncio.run(run())
    finally:
        engine.shutdown()
    assert len(seen) == 3
    checked = 0
    for result, prompt in zip(results, PROMPTS):
        values = seen[result.request_id]
        ids = [*prompt, *result.token_ids]
        assert len(result.token_ids) == N_NEW and values.covered >= len(ids)  # every position, the last kept token too
        pre, active, margin = expected(rm, ids)  # (T, L, F)
        watched = [r.watched for r in result.monitor.features]  # server watchlist, then the request's own
        columns = [(w.feature.layer, w.feature.index) for w in watched]
        lay = torch.tensor([c[0] for c in columns])
        idx = torch.tensor([c[1] for c in columns])
        want_pre, want_active, want_margin = pre[:, lay, idx], active[:, lay, idx], margin[:, lay, idx]  # (T, k)
        got_pre = torch.from_numpy(values.pre[: len(ids)].copy())
        got_active = torch.from_numpy(values.active[: len(ids)].copy())
        scale = float(want_pre.abs().max())
        assert (got_pre - want_pre).abs().max() <= TOL * scale, case
        assert not got_active[0].any()  # BOS
        differ = got_active[1:] != want_active[1:]
        assert bool((want_margin[1:][differ] <= TOL * scale).all()), case
        assert got_active.sum() > 10 and not differ.all()
        checked += got_pre.numel()
    assert checked > 3 * 20 * L * F
