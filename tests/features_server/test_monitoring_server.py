"""In-engine monitoring through a real server whose vLLM engine core runs in its own process.

The scenario (conftest) knows, from the tracing engine, every feature's activation at every
position of PROMPT + its greedy completion; the server computes them inside vLLM's forward pass.
"""

from __future__ import annotations

import concurrent.futures

import grpc
import pytest

from circuit_proto.v1 import generation_pb2 as gpb
from circuit_proto.v1 import generation_pb2_grpc as gpb_grpc
from circuit_proto.v1 import monitor_pb2 as mpb
from tests.features_server.conftest import N_NEW, STOP_AT, settled

TOL = 1e-4  # x max |activation|: in-engine vs tracing engine, float32


@pytest.fixture(scope="module")
def generation(features_server):
    channel = grpc.insecure_channel(features_server.target)
    yield gpb_grpc.GenerationStub(channel)
    channel.close()


def request(scenario, *, monitor=True, rules=(), values=False, max_new_tokens=N_NEW) -> gpb.GenerateRequest:
    return gpb.GenerateRequest(
        prompt_token_ids=scenario.prompt_ids,
        monitor=monitor,
        watch=list(rules),
        monitor_values=values,
        sampling=gpb.SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, ignore_eos=True),
    )


def stream(generation, req):
    messages = list(generation.GenerateStream(req, timeout=120))
    ids = [t for m in messages if m.HasField("delta") for t in m.delta.token_ids]
    values = [v for m in messages for v in (m.delta.activations if m.HasField("delta") else m.end.activations)]
    return ids, values, messages[-1].end


def test_stop_runs_no_engine_step_after_the_firing_token(generation, scenario, features_server):
    before = settled(features_server, "vllm:generation_tokens_total")
    ids, _, end = stream(generation, request(scenario))
    assert ids == scenario.greedy[: STOP_AT + 1] and end.finish_reason == gpb.FINISH_REASON_FEATURE_RULE
    # vLLM sampled the STOP_AT + 1 tokens sent and one more in the step that computed the firing
    # token's activations (dropped by the server); no step ran after that.
    assert settled(features_server, "vllm:generation_tokens_total") - before == STOP_AT + 2


def test_stop_rule_firing_on_the_prompt_yields_no_token(generation, scenario):
    P = len(scenario.prompt_ids)
    acts = scenario.acts[1:P]  # (P-1, L, F): position 0 (BOS) has no features
    F = acts.shape[2]
    k = int(acts.reshape(P - 1, -1).max(0).values.argmax())
    value = float(acts.reshape(P - 1, -1)[:, k].max())
    rule = mpb.WatchRule(name="prompt-stop", layer=k // F, index=k % F, threshold=value / 2, action="stop")
    for unary in (True, False):
        if unary:
            resp = generation.Generate(request(scenario, rules=[rule]), timeout=60)
            ids, end, reason = list(resp.token_ids), resp, resp.finish_reason
        else:
            ids, _, end = stream(generation, request(scenario, rules=[rule]))
            reason = end.finish_reason
        assert ids == [] and reason == gpb.FINISH_REASON_FEATURE_RULE
        assert end.usage.completion_tokens == 0 and end.monitor.stopped_by == "prompt-stop"
        own = next(f for f in end.monitor.features if f.name == "prompt-stop")
        assert own.prompt_positions and not own.completion_positions


def test_values_in_deltas_equal_the_tracing_engine(generation, scenario):
    ids, values, end = stream(generation, request(scenario, values=True))
    P = len(scenario.prompt_ids)
    n = P + len(ids)
    assert [v.position for v in values] == list(range(n))  # every position once, in order, through the last kept token
    names = [f.name for f in end.monitor.features]
    scale = float(scenario.acts[:n].abs().max())
    for v in values:
        assert all(x == 0.0 for x in v.values) if v.position == 0 else True
        for name, got in zip(names, v.values):
            e = scenario.watched[name]
            want = float(scenario.acts[v.position, e["layer"], e["index"]])
            assert abs(got - want) <= TOL * scale or _near_threshold(scenario, v.position, e)


def _near_threshold(scenario, position, e) -> bool:
    """A mask disagreement is allowed where the pre-activation is within tolerance of the JumpReLU threshold."""
    threshold = float(scenario.threshold[e["layer"], e["index"]])
    pre = float(scenario.pre[position, e["layer"], e["index"]])
    return abs(pre - threshold) <= TOL * float(scenario.pre.abs().max())


def test_concurrent_streams_get_their_own_rules(generation, scenario):
    """16 streams at once, each with a watched feature of its own (and the server watchlist)."""
    P = len(scenario.prompt_ids)
    L, F = scenario.acts.shape[1:]
    window = scenario.acts[: P + STOP_AT + 1].reshape(P + STOP_AT + 1, -1)  # (T, L*F) through the stop
    ranked = window[P:].max(0).values.argsort(descending=True).tolist()
    picks = [k for k in ranked if (k // F, k % F) not in {(e["layer"], e["index"]) for e in scenario.watched.values()}]
    picks = picks[:16]
    rules = [
        mpb.WatchRule(
            name=f"own-{i}", layer=k // F, index=k % F, threshold=float(window[P:, k].max()) / 2, action="flag"
        )
        for i, k in enumerate(picks)
    ]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda r: stream(generation, request(scenario, rules=[r])), rules))
    scale = float(window.abs().max())
    for (ids, _, end), rule, k in zip(results, rules, picks):
        assert ids == scenario.greedy[: STOP_AT + 1] and end.monitor.stopped_by == "stopper"
        report = {f.name: f for f in end.monitor.features}
        assert len(report) == len(scenario.watched) + 1  # the watchlist and this stream's own rule only
        own = report[rule.name]
        assert (own.layer, own.index) == (k // F, k % F) and own.fired and end.monitor.flagged
        assert own.max_activation == pytest.approx(float(window[:, k].max()), abs=TOL * scale)
        want = (window[P:, k] > rule.threshold).nonzero().flatten().tolist()
        assert list(own.completion_positions) == want


def test_bad_rules_are_invalid_argument(generation, scenario):
    L, F = scenario.acts.shape[1:]
    cases = [
        (mpb.WatchRule(name="x", layer=L, index=0, threshold=1, action="stop"), f"layer {L} does not exist"),
        (mpb.WatchRule(name="x", layer=0, index=F, threshold=1, action="stop"), f"index {F} does not exist"),
        (mpb.WatchRule(name="stopper", layer=0, index=0, threshold=1, action="flag"), "already used"),
        (mpb.WatchRule(name="x", layer=0, index=0, threshold=1, action="explode"), "use record, flag, stop or steer"),
    ]
    for rule, message in cases:
        with pytest.raises(grpc.RpcError) as info:
            generation.Generate(request(scenario, rules=[rule]), timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in info.value.details()
    too_many = [mpb.WatchRule(name=f"r{i}", layer=0, index=i, threshold=1) for i in range(9)]
    with pytest.raises(grpc.RpcError) as info:
        generation.Generate(request(scenario, rules=too_many), timeout=30)
    assert "at most 8" in info.value.details()
    assert list(generation.Generate(request(scenario), timeout=60).token_ids) == scenario.greedy[: STOP_AT + 1]


def test_stopped_completion_can_be_attributed(generation, scenario, features_server):
    from circuit_client import CircuitRpcError
    from circuit_client.attribution import AttributionClient, AttributionSettings

    resp = generation.Generate(request(scenario), timeout=60)
    assert resp.finish_reason == gpb.FINISH_REASON_FEATURE_RULE
    events = []
    with AttributionClient(features_server.target) as graphs:
        graphs.attribute(
            None,
            AttributionSettings(max_n_logits=2, max_feature_nodes=32),
            request_id=resp.request_id,
            token_index=STOP_AT,
            on_event=events.append,
        )
        assert events[0].audited_token_id == scenario.greedy[STOP_AT]
        assert list(events[0].token_ids)[-STOP_AT:] == scenario.greedy[:STOP_AT]
        with pytest.raises(CircuitRpcError) as info:  # the dropped token is not part of the completion
            graphs.attribute(
                None, AttributionSettings(max_n_logits=2), request_id=resp.request_id, token_index=STOP_AT + 1
            )
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_unmonitored_requests_match_vllm_without_the_plugin(generation, scenario, server):
    """The same greedy token ids from the monitoring server (tapped model) and a plain one."""
    plain_channel = grpc.insecure_channel(server.target)
    plain = gpb_grpc.GenerationStub(plain_channel)
    prompts = ["the old river runs to the sea and the", "the capital of veigrouan is", "a b c"]
    for prompt in prompts:
        req = gpb.GenerateRequest(
            prompt=prompt, sampling=gpb.SamplingParams(max_new_tokens=24, temperature=0.0, ignore_eos=True)
        )
        assert list(generation.Generate(req, timeout=60).token_ids) == list(plain.Generate(req, timeout=60).token_ids)
    plain_channel.close()


def test_steered_generate_equals_steer_on_the_replacement_model(features_server, generation, scenario):
    """Generate / GenerateStream with interventions (applied inside vLLM) give the ids of `Steer`
    (served by vLLM too, and equal to the replacement model's steering: test_steering_server), greedy
    float32; a bad position is INVALID_ARGUMENT naming the field."""
    from circuit_proto.v1 import features_pb2 as fpb
    from circuit_proto.v1 import features_pb2_grpc as fpb_grpc

    P = len(scenario.prompt_ids)
    acts = scenario.acts[:P]  # (P, L, F)
    F = acts.shape[2]
    k = int(acts[P - 1].reshape(-1).argmax())
    feature = fpb.FeatureRef(layer=k // F, index=k % F)
    interventions = [
        fpb.Intervention(feature=feature, op=fpb.INTERVENTION_OP_SET, value=0.0, positions=[P - 1, P - 2]),
        fpb.Intervention(feature=feature, op=fpb.INTERVENTION_OP_ADD, value=50.0, generated_tokens=True),
    ]
    with grpc.insecure_channel(features_server.target) as channel:
        steer = fpb_grpc.FeaturesStub(channel).Steer(
            fpb.SteerRequest(prompt_token_ids=scenario.prompt_ids, max_new_tokens=N_NEW, interventions=interventions),
            timeout=120,
        )
    want = list(steer.steered.token_ids)
    assert want != scenario.greedy[: len(want)]  # the interventions change the completion
    req = request(scenario, monitor=False)
    req.interventions.extend(interventions)
    assert list(generation.Generate(req, timeout=120).token_ids)[: len(want)] == want
    ids, _, _ = stream(generation, req)
    assert ids[: len(want)] == want
    req.interventions[0].positions.append(P)
    with pytest.raises(grpc.RpcError) as info:
        generation.Generate(req, timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "interventions[0].positions" in info.value.details()
    assert list(generation.Generate(request(scenario, monitor=False), timeout=60).token_ids) == scenario.greedy


def test_steer_rule_switches_interventions_on_after_its_feature_fires(generation, scenario):
    """A `steer` rule whose feature first fires at completion position j (chosen on the tracing
    engine's activations, clear margins) applies its interventions from position P + j + 1 on: its
    completion's tail equals a request on prompt + the first j + 1 tokens with the interventions
    on every generated token (both monitored by the server watchlist, whose stop rule ends both
    alike); the report gives `steered_from` = P + j + 1; a rule with no interventions is
    INVALID_ARGUMENT naming `watch[0].steer`."""
    from circuit_proto.v1 import features_pb2 as fpb

    P = len(scenario.prompt_ids)
    L, F = scenario.acts.shape[1:]
    flat = scenario.acts.reshape(scenario.acts.shape[0], L * F)  # (T, L*F)
    for j in range(3):  # the earliest completion position where some feature first fires clearly
        before, at = flat[: P + j].max(0).values, flat[P + j]
        margin = at - before
        k = int(margin.argmax())
        if float(margin[k]) > 1e-2:
            break
    else:
        raise AssertionError("no feature fires first at completion positions 0..2")
    top = int(scenario.acts[P - 1].reshape(-1).argmax())
    iv = fpb.Intervention(
        feature=fpb.FeatureRef(layer=top // F, index=top % F),
        op=fpb.INTERVENTION_OP_ADD,
        value=300.0,
        generated_tokens=True,
    )
    rule = mpb.WatchRule(
        name="steerer",
        layer=k // F,
        index=k % F,
        threshold=float(before[k] + margin[k] / 2),
        action="steer",
        steer=[iv],
    )
    end = generation.Generate(request(scenario, rules=[rule]), timeout=120)
    ids = list(end.token_ids)
    report = {r.name: r for r in end.monitor.features}["steerer"]
    assert report.completion_positions[0] == j and report.HasField("steered_from") and report.steered_from == P + j + 1
    assert ids[: j + 2] == scenario.greedy[: j + 2] and ids != scenario.greedy[: len(ids)]
    tail = request(scenario, max_new_tokens=N_NEW - j - 1)
    tail.prompt_token_ids.extend(scenario.greedy[: j + 1])
    tail.interventions.append(iv)
    assert list(generation.Generate(tail, timeout=120).token_ids) == ids[j + 1 :]
    ids_stream, _, end_stream = stream(generation, request(scenario, rules=[rule]))
    assert ids_stream == ids and {r.name: r for r in end_stream.monitor.features}["steerer"].steered_from == P + j + 1

    empty = mpb.WatchRule(name="steerer", layer=0, index=0, threshold=1, action="steer")
    with pytest.raises(grpc.RpcError) as info:
        generation.Generate(request(scenario, rules=[empty]), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "watch[0].steer" in info.value.details()
