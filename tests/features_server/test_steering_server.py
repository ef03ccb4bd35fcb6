"""Steering inside vLLM through the real features server (engine core in its own process), float32, greedy.

- Isolation: 16 concurrent GenerateStream calls, each with its own interventions, each get exactly
  the token ids it gets alone; unsteered requests sent among them get the token ids of the plain
  server (vLLM without the plugin, `server`), which the steered ones do not (not vacuous).
- `Steer` is served by vLLM (its counter and vLLM's generated-token counter move; the replacement
  path's does not) and answers what the replacement model's steering answers: prompt ids, steered
  and default token ids and texts, for set / scale / add at positions, the prompt and generated
  tokens, and stacked ops.
- A steered completion audited by `request_id` is refused with FAILED_PRECONDITION naming its
  interventions (README: graphs of steered runs are not computed); an unsteered one is audited.
"""

from __future__ import annotations

import concurrent.futures

import grpc
import pytest
import torch

from circuit_proto.v1 import features_pb2 as fpb
from circuit_proto.v1 import features_pb2_grpc as fpb_grpc
from circuit_proto.v1 import generation_pb2 as gpb
from circuit_proto.v1 import generation_pb2_grpc as gpb_grpc
from circuit_serve.rpc import convert_features
from tests.features_server.conftest import N_NEW, settled

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


@pytest.fixture(scope="module")
def features(features_server):
    channel = grpc.insecure_channel(features_server.target)
    yield fpb_grpc.FeaturesStub(channel)
    channel.close()


@pytest.fixture(scope="module")
def replacement(scenario):
    """The replacement model's features engine on the server's model and transcoders (this process)."""
    from circuit_serve.features.engine import FeaturesEngine
    from circuit_serve.tracing import ReplacementModel

    return FeaturesEngine(
        ReplacementModel.from_pretrained(scenario.model_dir, scenario.transcoders, dtype=torch.float32)
    )


def test_steer_runs_on_vllm_and_equals_the_replacement_model(features, features_server, replacement, scenario):
    sets = distinct_interventions(scenario)[:4]
    sets.append([*sets[0], *sets[1], *sets[2]])  # stacked: three ops in request order
    counts = {e: features_server.metric("circuit_steer_requests_total", engine=e) for e in ("vllm", "replacement")}
    tokens = settled(features_server, "vllm:generation_tokens_total")
    generated = 0
    changed = 0
    for ivs in sets:
        req = fpb.SteerRequest(
            prompt_token_ids=scenario.prompt_ids, max_new_tokens=N_NEW, include_default=True, interventions=ivs
        )
        got = features.Steer(req, timeout=120)
        query = convert_features.steer_query(req)
        want = replacement.steer(query, replacement.check_steer(query, 1 << 30))
        assert list(got.prompt_token_ids) == list(want.prompt_token_ids)
        assert list(got.steered.token_ids) == list(want.steered.token_ids), ivs
        assert got.steered.text == want.steered.text
        assert list(got.default.token_ids) == list(want.default.token_ids)
        assert got.default.text == want.default.text
        generated += len(got.steered.token_ids) + len(got.default.token_ids)
        changed += list(want.steered.token_ids) != list(want.default.token_ids)
    assert changed >= 3, changed  # the comparison is not vacuous
    assert features_server.metric("circuit_steer_requests_total", engine="vllm") == counts["vllm"] + len(sets)
    assert features_server.metric("circuit_steer_requests_total", engine="replacement") == counts["replacement"]
    assert settled(features_server, "vllm:generation_tokens_total") - tokens == generated


def test_auditing_a_steered_completion_is_refused_naming_its_interventions(generation, features_server, scenario):
    from circuit_client import CircuitRpcError
    from circuit_client.attribution import AttributionClient, AttributionSettings

    ivs = distinct_interventions(scenario)[1]
    steered = generation.Generate(request(scenario.prompt_ids, ivs), timeout=120)
    plain = generation.Generate(request(scenario.prompt_ids), timeout=120)
    f = ivs[0].feature
    with AttributionClient(features_server.target) as graphs:
        with pytest.raises(CircuitRpcError) as info:
            graphs.attribute(None, AttributionSettings(max_n_logits=2), request_id=steered.request_id, token_index=0)
        events = []
        graphs.attribute(  # the unsteered completion of the same prompt is audited
            None,
            AttributionSettings(max_n_logits=2, max_feature_nodes=16),
            request_id=plain.request_id,
            token_index=0,
            on_event=events.append,
        )
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "was a steered completion (1 intervention: add " + f"{f.layer}:{f.index})" in info.value.details
    assert "graphs of steered runs are not computed" in info.value.details
    assert events[0].audited_token_id == plain.token_ids[0]
