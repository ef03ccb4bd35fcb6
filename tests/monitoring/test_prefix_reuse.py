"""Monitored requests keep vLLM's prefix cache and still get exact values at every position.

One engine per architecture (Llama, Gemma-2, Qwen3; KV blocks of 32 tokens; the engine core in
the test's process: test_exactness covers its own process), the whole transcoder set as the server watchlist, prompts sharing a 56-token prefix
(one full block; the second block mixes prefix and tail, like a system prompt followed by a user
message). In order:

1. an unmonitored request (a 4-token tail) computes its prompt: vLLM caches its first block, no
   values anywhere;
2. a monitored request with a longer tail: no stored values yet, so it is computed in full in the
   monitored namespace and its blocks' values are stored;
3. a monitored request with a third tail reuses 2's first block (vLLM's num_cached_tokens, and
   the first position the taps computed, are 32) and computes its own second block;
4. a monitored request with 1's prompt reuses the block 1 computed (no salt: every block vLLM may
   reuse has stored values);
5. a monitored request whose stop rule fires on a cached prompt position yields no token.

For 2, 3 and 4, every prompt and generated position equals the tracing engine's within
test_exactness's tolerance.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import torch

from circuit_serve.config.serve import EngineConfig
from circuit_serve.domain.features import Action, FeatureRef, WatchedFeature, WatchRequest
from circuit_serve.domain.generation import FinishReason, GenerationRequest, SamplingOptions
from circuit_serve.generation.engine import GenerationEngine
from circuit_serve.monitoring.block_store import NAMESPACE, SHARED
from circuit_serve.monitoring.monitor import EngineMonitor
from circuit_serve.tracing import ReplacementModel
from tests.monitoring.test_exactness import TOL, VOCAB, build, expected

BLOCK = 32
N_NEW = 6
PREFIX = [2, *[(7 * i + 3) % (VOCAB - 4) + 3 for i in range(55)]]  # BOS + 55: one full block and 24 more
TAILS = [[12, 77, 5], [33, 9, 61, 20, 8, 15, 70, 3, 41, 66], [88, 14, 50, 6, 71, 27, 90, 11, 36, 52, 4, 63]]
TAILS.append([19, 44, 25, 80, 7, 58, 31, 62, 13])
# On this Gemma-2 (sliding window of 4 tokens: vLLM's hybrid KV cache) vLLM 0.32 reused the block in
# one run and not in another (not investigated): the taps must start where its reuse ends, and
# every value must be exact either way
REUSED = {"llama-plt-relu-skip", "qwen3-plt-topk"}


def check_values(rm, values, ids: list[int], features: list[WatchedFeature], case: str) -> None:
    pre, active, margin = expected(rm, ids)  # (T, L, F)
    lay = torch.tensor([w.feature.layer for w in features])
    idx = torch.tensor([w.feature.index for w in features])
    want_pre, want_active, want_margin = pre[:, lay, idx], active[:, lay, idx], margin[:, lay, idx]
    assert values.covered >= len(ids)
    got_pre = torch.from_numpy(values.pre[: len(ids)].copy())
    got_active = torch.from_numpy(values.active[: len(ids)].copy())
    scale = float(want_pre.abs().max())
    assert (got_pre - want_pre).abs().max() <= TOL * scale, case
    assert not got_active[0].any()  # BOS
    differ = got_active[1:] != want_active[1:]
    assert bool((want_margin[1:][differ] <= TOL * scale).all()), case
    assert got_active.sum() > 10


@pytest.mark.parametrize("case", ["llama-plt-relu-skip", "gemma2-plt-jumprelu", "qwen3-plt-topk"])
def test_monitored_requests_reuse_cached_blocks_exactly(case, tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process: starts and stops faster
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    model_dir, tc_dir = build(case, tmp_path)
    config_file = model_dir / "config.json"  # room for two blocks and a completion (RoPE: any position)
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "max_position_embeddings": 128}))
    rm = ReplacementModel.from_pretrained(model_dir, tc_dir, dtype="float32", device="cpu")
    L, F = rm.transcoders.n_layers, rm.transcoders.d_transcoder
    server = tuple(
        WatchedFeature(f"f{layer}-{i}", FeatureRef(layer, i), 1e9, Action.RECORD)
        for layer in range(L)
        for i in range(F)
    )
    monitor = EngineMonitor(
        rm.transcoders,
        server,
        model_type=rm.arch.model_type,
        request_slots=2,
        max_request_watch=2,
        work_dir=tmp_path,
        cache_bytes=8 << 20,
    )
    begun, values = {}, {}
    begin, close = monitor.begin, monitor.channel.close
    monitor.begin = lambda rid, *a, **k: begun.setdefault(rid, begin(rid, *a, **k))
    monitor.channel.close = lambda rid: (values.__setitem__(rid, monitor.channel._requests.get(rid)), close(rid))[1]
    config = EngineConfig(
        model=model_dir,
        dtype="float32",
        max_model_len=96,
        enforce_eager=True,
        kv_cache_gib=0.5,
        extra={"enable_prefix_caching": True, "block_size": BLOCK},
    )
    engine = GenerationEngine(config)
    cached: dict[str, int] = {}
    sampled: dict[str, int] = {}
    greedy = SamplingOptions(max_new_tokens=N_NEW, temperature=0.0, ignore_eos=True)
    prompts = [PREFIX + t for t in TAILS]

    def monitored(ids, watch=server):
        return GenerationRequest(
            prompt_token_ids=tuple(ids), sampling=greedy, watch=WatchRequest(watch, n_server=len(server))
        )

    async def run():
        await engine.start(monitor)
        generate = engine._llm.generate

        async def spy(*args, request_id, **kwargs):  # vLLM's own count of each request's cached tokens
            async for out in generate(*args, request_id=request_id, **kwargs):
                cached[request_id] = out.num_cached_tokens
                sampled[request_id] = len(out.outputs[0].token_ids)  # final output only: every token
                yield out

        engine._llm.generate = spy
        plain = await engine.generate(GenerationRequest(prompt_token_ids=tuple(prompts[0]), sampling=greedy))
        results = [await engine.generate(monitored(p)) for p in (prompts[1], prompts[2], prompts[0])]
        # 5: a stop rule on the feature most active in the cached blocks, just below its maximum there
        pre, active, _ = expected(rm, prompts[3][:BLOCK])
        act = torch.where(active, pre, torch.zeros(())).flatten(1)[1:]  # (positions 1.., L*F)
        j = int(act.max(0).values.argmax())
        stop_pos, top = int(act[:, j].argmax()) + 1, float(act[:, j].max())
        rules = list(server)
        rules[j] = WatchedFeature("cached-stop", server[j].feature, top * (1 - 1e-3), Action.STOP)
        stopped = await engine.generate(monitored(prompts[3], tuple(rules)))
        return plain, results, stopped, j, stop_pos

    try:
        plain, results, stopped, j, stop_pos = asyncio.run(run())
    finally:
        engine.shutdown()
    assert cached[plain.request_id] == 0
    first, second, third = results
    assert begun[first.request_id].route.kind == NAMESPACE and cached[first.request_id] == 0
    assert begun[second.request_id].route.kind == NAMESPACE  # its second block has no stored values
    assert begun[third.request_id].route.kind == SHARED  # every reusable block has stored values
    for r in (second, third):  # vLLM reused the shared block, and the taps started after it
        assert cached[r.request_id] in ({BLOCK} if case in REUSED else {0, BLOCK}), case
        assert values[r.request_id].engine_from == cached[r.request_id], case
    assert third.token_ids == plain.token_ids  # the same greedy completion as unmonitored
    for r, prompt in zip(results, (prompts[1], prompts[2], prompts[0]), strict=True):
        assert len(r.token_ids) == N_NEW
        check_values(rm, values[r.request_id], [*prompt, *r.token_ids], list(server), case)
    # the stop fired on a position vLLM took from its cache: no token, and the engine ran one step
    assert cached[stopped.request_id] in ({BLOCK} if case in REUSED else {0, BLOCK})
    assert values[stopped.request_id].engine_from == cached[stopped.request_id]
    assert sampled[stopped.request_id] == 1  # the forced stop token, sampled with the prefill
    assert stopped.token_ids == () and stopped.finish_reason is FinishReason.FEATURE_RULE
    assert stopped.monitor.stopped_by == "cached-stop"
    assert stop_pos in stopped.monitor.features[j].prompt_positions
    assert min(stopped.monitor.features[j].prompt_positions) < BLOCK
