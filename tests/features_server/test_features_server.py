"""Features against a real server (real vLLM): activations, monitoring, stop rule, metrics, steering, errors."""

from __future__ import annotations

import grpc
import pytest

from circuit_proto.v1 import features_pb2 as fpb
from circuit_proto.v1 import features_pb2_grpc as fpb_grpc
from circuit_proto.v1 import generation_pb2 as gpb
from circuit_proto.v1 import generation_pb2_grpc as gpb_grpc
from tests.features_server.conftest import N_NEW, STOP_AT, label_of


@pytest.fixture(scope="module")
def stubs(features_server):
    channel = grpc.insecure_channel(features_server.target)
    yield gpb_grpc.GenerationStub(channel), fpb_grpc.FeaturesStub(channel)
    channel.close()


def generate_request(scenario, *, monitor: bool) -> gpb.GenerateRequest:
    return gpb.GenerateRequest(
        prompt_token_ids=scenario.prompt_ids,
        monitor=monitor,
        sampling=gpb.SamplingParams(max_new_tokens=N_NEW, temperature=0.0, ignore_eos=True),
    )


def test_feature_activations_equal_the_graph(stubs, scenario):
    from circuit_serve.tracing import ReplacementModel

    rm = ReplacementModel.from_pretrained(scenario.model_dir, scenario.transcoders)
    graph = rm.attribute(scenario.prompt_ids, max_n_logits=2, batch_size=64)
    want = {tuple(k): v for k, v in zip(graph.active_features.tolist(), graph.activation_values.tolist())}
    features = sorted({(layer, index) for layer, _, index in want})[:200]
    resp = stubs[1].FeatureActivations(
        fpb.FeatureActivationsRequest(
            prompt_token_ids=graph.input_tokens.tolist(),
            features=[fpb.FeatureRef(layer=layer, index=index) for layer, index in features],
        ),
        timeout=60,
    )
    assert [p.token_id for p in resp.positions] == graph.input_tokens.tolist()
    assert resp.positions[0].features[0].label == label_of(*features[0])
    n_checked = 0
    for p in resp.positions:
        for v in p.features:
            # The graph here and the server run the same code in different processes, whose
            # thread counts (and so float32 reduction orders) can differ: equal to float32 noise.
            assert v.activation == pytest.approx(want.get((v.layer, p.position, v.index), 0.0), rel=1e-5, abs=1e-5)
            n_checked += (v.layer, p.position, v.index) in want
    assert n_checked > 10


def test_unmonitored_request_has_the_same_token_ids(stubs, scenario):
    resp = stubs[0].Generate(generate_request(scenario, monitor=False), timeout=60)
    assert list(resp.token_ids) == scenario.greedy
    assert not resp.HasField("monitor")


def test_stop_rule_ends_the_stream_at_the_firing_token(stubs, scenario, features_server):
    before = features_server.metric(
        "circuit_watched_feature_actions_total", feature="stopper", label=scenario.label("stopper"), action="stop"
    )
    messages = list(stubs[0].GenerateStream(generate_request(scenario, monitor=True), timeout=60))
    ids = [t for m in messages if m.HasField("delta") for t in m.delta.token_ids]
    end = messages[-1].end
    assert ids == scenario.greedy[: STOP_AT + 1]  # bound: nothing after the firing token
    assert end.finish_reason == gpb.FINISH_REASON_FEATURE_RULE and end.monitor.stopped_by == "stopper"
    assert end.usage.completion_tokens == STOP_AT + 1
    report = {f.name: f for f in end.monitor.features}
    assert len(report) == 10
    assert list(report["stopper"].completion_positions) == [STOP_AT] and report["stopper"].fired
    assert list(report["marker"].completion_positions) == scenario.expected_positions["marker"]
    assert report["marker"].label == "marker label" and not report["marker"].prompt_positions
    assert report["flagger"].fired and end.monitor.flagged
    assert not report["extra-0"].fired
    after = features_server.metric(
        "circuit_watched_feature_actions_total", feature="stopper", label=scenario.label("stopper"), action="stop"
    )
    assert after == before + 1


def test_unary_monitored_generation(stubs, scenario):
    resp = stubs[0].Generate(generate_request(scenario, monitor=True), timeout=60)
    assert list(resp.token_ids) == scenario.greedy[: STOP_AT + 1]
    assert resp.finish_reason == gpb.FINISH_REASON_FEATURE_RULE and resp.monitor.stopped_by == "stopper"
    marker = next(f for f in resp.monitor.features if f.name == "marker")
    assert list(marker.completion_positions) == scenario.expected_positions["marker"]
    expected_max = float(scenario.acts[: len(scenario.prompt_ids) + STOP_AT + 1, marker.layer, marker.index].max())
    assert marker.max_activation == pytest.approx(expected_max, abs=1e-4)


def test_metrics_move_with_traffic(stubs, scenario, features_server):
    def counts():
        return {
            name: features_server.metric(
                "circuit_watched_feature_max_activation_count", feature=name, label=scenario.label(name)
            )
            for name in scenario.watched
        }

    before = counts()
    flag_labels = {"feature": "flagger", "label": scenario.label("flagger")}
    fired = features_server.metric("circuit_watched_feature_fired_total", **flag_labels)
    flags = features_server.metric("circuit_watched_feature_actions_total", **flag_labels, action="flag")
    overhead = features_server.metric("circuit_monitor_overhead_seconds_count")
    for _ in range(3):
        stubs[0].Generate(generate_request(scenario, monitor=True), timeout=60)
    stubs[0].Generate(generate_request(scenario, monitor=False), timeout=60)  # not counted
    assert {k: v - before[k] for k, v in counts().items()} == {name: 3 for name in scenario.watched}
    assert features_server.metric("circuit_watched_feature_fired_total", **flag_labels) == fired + 3
    assert features_server.metric("circuit_watched_feature_actions_total", **flag_labels, action="flag") == flags + 3
    assert features_server.metric("circuit_monitor_overhead_seconds_count") == overhead + 3


def test_steering_to_the_current_value_changes_nothing(stubs, scenario):
    P = len(scenario.prompt_ids)
    acts = scenario.acts[:P]  # (P, L, F)
    F = acts.shape[2]
    pos = P - 1
    k = int(acts[pos].reshape(-1).argmax())
    value = float(acts[pos].reshape(-1)[k])
    assert value > 0
    req = fpb.SteerRequest(
        prompt_token_ids=scenario.prompt_ids,
        max_new_tokens=8,
        include_default=True,
        interventions=[
            fpb.Intervention(
                feature=fpb.FeatureRef(layer=k // F, index=k % F),
                op=fpb.INTERVENTION_OP_SET,
                value=value,
                positions=[pos],
            )
        ],
    )
    resp = stubs[1].Steer(req, timeout=120)
    assert list(resp.steered.token_ids) == list(resp.default.token_ids) == scenario.greedy[:8]
    req.interventions[0].op = fpb.INTERVENTION_OP_ADD
    req.interventions[0].value = 1000.0
    req.interventions[0].generated_tokens = True
    assert list(stubs[1].Steer(req, timeout=120).steered.token_ids) != scenario.greedy[:8]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ("activations-layer", "layer 99 does not exist"),
        ("activations-index", "index 100000 does not exist"),
        ("steer-position", "is beyond the prompt"),
    ],
)
def test_bad_input_is_invalid_argument_and_the_server_keeps_serving(stubs, scenario, call, message):
    generation, features = stubs
    with pytest.raises(grpc.RpcError) as info:
        if call.startswith("activations"):
            ref = fpb.FeatureRef(layer=99, index=0) if call.endswith("layer") else fpb.FeatureRef(layer=0, index=100000)
            features.FeatureActivations(fpb.FeatureActivationsRequest(prompt="the sea", features=[ref]), timeout=30)
        else:
            iv = fpb.Intervention(
                feature=fpb.FeatureRef(layer=0, index=0),
                op=fpb.INTERVENTION_OP_SET,
                positions=[len(scenario.prompt_ids)],
            )
            features.Steer(fpb.SteerRequest(prompt_token_ids=scenario.prompt_ids, interventions=[iv]), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in info.value.details()
    resp = generation.Generate(generate_request(scenario, monitor=False), timeout=60)
    assert list(resp.token_ids) == scenario.greedy


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "watchlist.yaml",
            "- {name: a, layer: 0, index: 1, threshold: 1, action: explode}\n",
            "field 'action': is 'explode'; must be one of record, flag, stop",
        ),
        ("labels.json", '[{"layer": 0, "index": 1}]', "field 'label': is missing"),
        (
            "watchlist.yaml",
            "- {name: a, layer: 0, index: 99999, threshold: 1, action: stop}\n",
            "index 99999 does not exist",
        ),
    ],
)
def test_malformed_files_stop_the_start_up_with_a_clear_error(launch_server, scenario, tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    flag = "--watchlist" if name.startswith("watchlist") else "--labels"
    with pytest.raises(RuntimeError, match="server exited") as info:
        launch_server("--transcoders", str(scenario.transcoders), flag, str(path))
    assert message in str(info.value) and str(path) in str(info.value)


def test_labels_are_the_clerp_of_graph_nodes(features_server, scenario):
    from circuit_client.attribution import AttributionClient, AttributionSettings

    with AttributionClient(features_server.target) as graphs:
        result = graphs.attribute(
            prompt_token_ids=scenario.prompt_ids, settings=AttributionSettings(max_n_logits=2), output="json"
        )
    nodes = [n for n in result.frontend()["nodes"] if n["feature_type"] == "cross layer transcoder"]
    assert nodes and all(n["clerp"] in (label_of(int(n["layer"]), _index(n)), "marker label") for n in nodes)


def _index(node: dict) -> int:
    return int(node["node_id"].split("_")[1])  # "{layer}_{index}_{pos}"


def run_cli(features_server, *args: str) -> str:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "circuit_client.cli", *args, "--target", features_server.target],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_cli(features_server, scenario):
    marker = scenario.watched["marker"]
    table = run_cli(
        features_server, "features", "--prompt", "the sea", "--feature", f"{marker['layer']}:{marker['index']}"
    )
    assert table.splitlines()[0] == f"pos\ttoken\t{marker['layer']}:{marker['index']} marker label"
    assert "=" in run_cli(features_server, "features", "--prompt", "the sea", "--top-k", "3").splitlines()[2]
    monitored = run_cli(
        features_server,
        "generate",
        "the old river runs to the sea and the",
        "--monitor",
        "--temperature",
        "0",
        "--max-new-tokens",
        "4",
    )
    assert "monitor: " in monitored and "marker (marker label)" in monitored
    steered = run_cli(
        features_server, "steer", "--prompt", "the sea", "--intervene", "0:1:set:0", "--max-new-tokens", "4"
    )
    assert steered.splitlines()[0].startswith("default") and "| steered" in steered.splitlines()[0]
