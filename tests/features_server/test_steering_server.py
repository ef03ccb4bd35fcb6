"""Steering inside vLLM through the real features server (engine core in its own process), float32, greedy.

- Isolation: 16 concurrent GenerateStream calls, each with its own interventions, each get exactly
  the token ids it gets alone; unsteered requests sent among them get the token ids of the plain
  server (vLLM without the plugin, `server`), which the steered ones do not (not vacuous).
"""

from __future__ import annotations

import concurrent.futures

import grpc
import pytest

from circuit_proto.v1 import features_pb2 as fpb
from circuit_proto.v1 import generation_pb2 as gpb
from circuit_proto.v1 import generation_pb2_grpc as gpb_grpc
from tests.features_server.conftest import N_NEW

N_STREAMS = 16


@pytest.fixture(scope="module")
def generation(features_server):
    channel = grpc.insecure_channel(features_server.target)
    yield gpb_grpc.GenerationStub(channel)
    channel.close()


@pytest.fixture(scope="module")
def plain(server):
    """Generation on the demo model without transcoders: vLLM without the plugin."""
    channel = grpc.insecure_channel(server.target)
    yield gpb_grpc.GenerationStub(channel)
    channel.close()


def request(prompt_ids, interventions=()) -> gpb.GenerateRequest:
    return gpb.GenerateRequest(
        prompt_token_ids=prompt_ids,
        interventions=list(interventions),
        sampling=gpb.SamplingParams(max_new_tokens=N_NEW, temperature=0.0, ignore_eos=True),
    )


def stream_ids(stub, req) -> list[int]:
    return [t for m in stub.GenerateStream(req, timeout=180) if m.HasField("delta") for t in m.delta.token_ids]


def distinct_interventions(scenario) -> list[list[fpb.Intervention]]:
    """N_STREAMS different sets: per stream a feature active in the prompt (the most active ones,
    layer by layer), an op (set / scale / add), where (listed positions, the whole prompt, the
    generated tokens) and a value that differ from every other stream's."""
    P = len(scenario.prompt_ids)
    acts = scenario.acts[:P]  # (P, L, F)
    L, F = acts.shape[1:]
    ranked = [acts[:, layer].sum(0).argsort(descending=True).tolist() for layer in range(L)]  # per layer, by mass
    sets = []
    for i in range(N_STREAMS):
        layer = i % L
        f = fpb.FeatureRef(layer=layer, index=ranked[layer][i // L])
        kind = i % 4
        if kind == 0:
            iv = fpb.Intervention(feature=f, op=fpb.INTERVENTION_OP_SET, value=0.0, all_prompt_positions=True)
        elif kind == 1:
            iv = fpb.Intervention(feature=f, op=fpb.INTERVENTION_OP_ADD, value=30.0 + i, generated_tokens=True)
        elif kind == 2:
            iv = fpb.Intervention(feature=f, op=fpb.INTERVENTION_OP_SCALE, value=-3.0 - i, positions=[P - 1, P - 2])
        else:
            iv = fpb.Intervention(
                feature=f, op=fpb.INTERVENTION_OP_SET, value=20.0 + i, positions=[P - 1], generated_tokens=True
            )
        sets.append([iv])
    return sets


def test_sixteen_concurrent_steered_streams_each_get_what_they_get_alone(generation, plain, scenario):
    sets = distinct_interventions(scenario)
    unsteered_prompts = [scenario.prompt_ids, scenario.prompt_ids[:-2]]
    alone = [stream_ids(generation, request(scenario.prompt_ids, ivs)) for ivs in sets]
    with concurrent.futures.ThreadPoolExecutor(N_STREAMS + len(unsteered_prompts)) as pool:
        steered = [pool.submit(stream_ids, generation, request(scenario.prompt_ids, ivs)) for ivs in sets]
        unsteered = [pool.submit(stream_ids, generation, request(p)) for p in unsteered_prompts]
        together = [f.result() for f in steered]
        unsteered_ids = [f.result() for f in unsteered]
    for k, (got, want) in enumerate(zip(together, alone)):
        assert got == want, (k, sets[k])
    without_plugin = [stream_ids(plain, request(p)) for p in unsteered_prompts]
    assert unsteered_ids == without_plugin
    assert unsteered_ids[0] == scenario.greedy
    changed = sum(ids != scenario.greedy for ids in alone)
    assert changed >= N_STREAMS // 2, changed  # the interventions change most completions
    assert len({tuple(ids) for ids in alone}) > 2  # and not all the same way
