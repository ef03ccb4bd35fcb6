"""Attribution over gRPC against a real server (real vLLM, real Redis started here).

One server with transcoders and Redis serves the module; the session's plain
server (no transcoders) checks FAILED_PRECONDITION. Graph settings are kept
small (a few dozen feature nodes) except where a test needs a slow graph:
batch size 1 over every active feature gives hundreds of backward passes, each
a batch boundary where cancellation is checked.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid

import grpc
import pytest

from circuit_client import CircuitClient, CircuitRpcError, Sampling
from circuit_client.attribution import Accepted, AttributionClient, AttributionSettings, GraphResult, Queued, Running

PROMPT = "Paris is the capital of France. Berlin is the capital of"
SMALL = AttributionSettings(max_feature_nodes=48, batch_size=32)
SLOW = AttributionSettings(batch_size=1, max_feature_nodes=4096)
MEDIUM_PROMPT = "The quick brown fox jumps over the lazy dog. The cat sat on the mat. The dog slept by the door."
LONG_PROMPT = " ".join(["The quick brown fox jumps over the lazy dog."] * 6)  # 61 tokens
SERVER_PREFIX = f"t-{uuid.uuid4().hex[:8]}:"  # the test server's Redis keys
# long enough in phase 5 for a second request to join it: ~3 s of batches on the 2-core dev machine
# (600 feature nodes took 1.2 s there, and a faster CI machine had finished before the second arrived)
JOINABLE = AttributionSettings(batch_size=1, max_feature_nodes=2400)


@pytest.fixture(scope="module")
def transcoder_dir(random_model_dir, tmp_path_factory):
    from circuit_serve.demo.random_transcoders import write_random_transcoders

    return write_random_transcoders(random_model_dir, tmp_path_factory.mktemp("transcoders"), d_transcoder=256, seed=0)


@pytest.fixture(scope="module")
def redis_for_server():
    """A Redis this module owns (it is stopped and restarted mid-test)."""
    from circuit_serve.testing.redis_server import RedisServer

    if shutil.which("redis-server") is None:
        pytest.skip("no redis-server binary to start a private Redis")
    server = RedisServer().start()
    yield server
    server.close()


def server_args(transcoder_dir, redis_for_server) -> list[str]:
    return [
        "--transcoders",
        str(transcoder_dir),
        "--redis-url",
        redis_for_server.url,
        "--redis-prefix",
        SERVER_PREFIX,
        "--attribution-workers",
        "1",
        "--attribution-max-queued",
        "1",
        "--attribution-max-prompt-tokens",
        "64",
        "--attribution-max-feature-nodes",
        "4096",
        "--attribution-max-batch-size",
        "256",
        "--attribution-memory-budget-gib",
        str(48 / 1024),
    ]


@pytest.fixture(scope="module")
def attr_server(launch_server, random_model_dir, transcoder_dir, redis_for_server):
    return launch_server(*server_args(transcoder_dir, redis_for_server), model_dir=random_model_dir)


@pytest.fixture
def graphs(attr_server):
    with AttributionClient(attr_server.target, timeout=300) as client:
        yield client


def unique(settings: AttributionSettings, **over) -> AttributionSettings:
    """Same graph shape, new cache key (the edge threshold is part of the key)."""
    from dataclasses import replace

    return replace(settings, edge_threshold=0.9 + 0.09 * (uuid.uuid4().int % 10_000) / 10_000, **over)


def counter(srv, name, **labels) -> float:
    return srv.metric(name, **labels)


# ---------------------------------------------------------------------------- correctness


def test_graph_over_grpc_equals_the_engine(graphs, random_model_dir, transcoder_dir):
    from circuit_serve.attribution.engine import TracingEngine
    from circuit_serve.rpc.convert_attribution import GRAPH_FORMAT
    from circuit_serve.rpc.convert_graph import serialize_graph
    from circuit_serve.tracing import ReplacementModel

    events = []
    result = graphs.attribute(PROMPT, SMALL, on_event=events.append)
    accepted = events[0]
    assert isinstance(accepted, Accepted) and accepted.key == result.key
    assert any(isinstance(e, Running) for e in events) and result.source in ("computed", "cache")

    rm = ReplacementModel.from_pretrained(random_model_dir, transcoder_dir, dtype="float32", device="cpu")
    assert rm.tokenize(PROMPT) == list(accepted.token_ids)
    engine = TracingEngine(rm, serialize=serialize_graph, graph_format=GRAPH_FORMAT)
    from circuit_serve.tracing import AttributionSettings as EngineSettings

    local = engine.compute(
        list(accepted.token_ids),
        EngineSettings(max_feature_nodes=48, batch_size=32),
        None,
        lambda *a: None,
        lambda: False,
        slug=result.key,
    )
    ours, theirs = result.frontend(), json.loads(local.sections["graph.json"])
    assert [n["node_id"] for n in ours["nodes"]] == [n["node_id"] for n in theirs["nodes"]]
    assert [(e["source"], e["target"]) for e in ours["links"]] == [(e["source"], e["target"]) for e in theirs["links"]]
    for a, b in zip(ours["links"], theirs["links"]):
        assert a["weight"] == pytest.approx(b["weight"], rel=1e-4, abs=1e-6)
    from circuit_proto.v1 import graph_pb2

    local_graph = graph_pb2.Graph.FromString(local.sections["graph.pb"])
    assert len(result.graph.nodes) == len(local_graph.nodes)


def test_qk_attribution_over_grpc(graphs):
    """The requested attention edges come back split in the protobuf graph and the frontend JSON,
    each side's listed contributions + rest + constant giving the score."""
    edges = [(1, 1, 9, 2), (0, 0, 4, 0)]
    result = graphs.attribute(PROMPT, unique(SMALL, qk_edges=edges))
    msg, js = result.graph, result.frontend()
    assert [(m.edge.layer, m.edge.head, m.edge.query_pos, m.edge.key_pos) for m in msg.qk] == edges
    assert [(x["layer"], x["head"], x["query_pos"], x["key_pos"]) for x in js["qk"]] == edges
    for m in msg.qk:
        for side in (m.query, m.key):
            total = sum(c.contribution for c in side.components) + side.rest + side.constant
            assert total == pytest.approx(m.score, abs=1e-4 * max(1.0, abs(m.score)))
    assert len(msg.settings.qk_edges) == 2


def test_audit_token_of_a_served_completion(attr_server, graphs):
    with CircuitClient(attr_server.target) as client:
        gen = client.generate(PROMPT, Sampling(max_new_tokens=6, temperature=0))
        prompt_ids = client.tokenize(PROMPT).token_ids
    k = 3
    audited = []
    by_request = graphs.attribute(None, SMALL, request_id=gen.request_id, token_index=k, on_event=audited.append)
    direct = graphs.attribute(None, SMALL, prompt_token_ids=[*prompt_ids, *gen.token_ids[:k]])
    assert audited[0].audited_token_id == gen.token_ids[k]
    assert list(audited[0].token_ids)[-k:] == list(gen.token_ids[:k])
    assert direct.key == by_request.key and direct.source == "cache"
    assert direct.frontend_json == by_request.frontend_json


# ---------------------------------------------------------------------------- cache and Redis


def test_second_identical_request_is_a_cache_hit_with_identical_bytes(attr_server, graphs):
    settings = unique(SMALL)
    hits = counter(attr_server, "circuit_graph_cache_hits_total", backend="redis")
    first = graphs.attribute(PROMPT, settings)
    second = graphs.attribute(PROMPT, settings)
    assert first.source == "computed" and second.source == "cache"
    assert second.frontend_json == first.frontend_json
    assert second.graph.SerializeToString() == first.graph.SerializeToString()
    assert counter(attr_server, "circuit_graph_cache_hits_total", backend="redis") == hits + 1
    fetched = graphs.get_graph(first.key)
    assert fetched.frontend_json == first.frontend_json


def test_corrupt_cache_entry_is_recomputed_not_served(attr_server, graphs, redis_for_server):
    import redis

    settings = unique(SMALL)
    first = graphs.attribute(PROMPT, settings)
    bad = counter(attr_server, "circuit_graph_cache_bad_entries_total", backend="redis")
    client = redis.Redis.from_url(redis_for_server.url)
    name = f"{SERVER_PREFIX}graph:{first.key}"
    blob = client.get(name)
    client.set(name, blob[:-10])  # truncated: its checksum no longer matches
    again = graphs.attribute(PROMPT, settings)
    assert again.source == "computed" and again.frontend_json == first.frontend_json
    assert counter(attr_server, "circuit_graph_cache_bad_entries_total", backend="redis") == bad + 1
    client.close()
    third = graphs.attribute(PROMPT, settings)  # the recomputed entry replaced the corrupt one
    assert third.source == "cache" and third.graph.SerializeToString() == again.graph.SerializeToString()


def test_redis_stopped_mid_test_then_restarted(attr_server, graphs, redis_for_server):
    errors = counter(attr_server, "circuit_graph_cache_errors_total", backend="redis", op="get")
    redis_for_server.stop()
    try:
        with CircuitClient(attr_server.target) as client:
            assert client.generate("Hello", Sampling(max_new_tokens=4, temperature=0)).token_ids
        down = graphs.attribute(PROMPT, unique(SMALL))
        assert down.source == "computed" and down.frontend()["nodes"]
        assert counter(attr_server, "circuit_graph_cache_errors_total", backend="redis", op="get") > errors
    finally:
        redis_for_server.start()
    settings = unique(SMALL)
    deadline = time.monotonic() + 30
    while True:  # the server reconnects by itself after its short back-off
        first = graphs.attribute(PROMPT, settings)
        again = graphs.attribute(PROMPT, settings)
        if again.source == "cache":
            break
        assert time.monotonic() < deadline, "the graph cache did not come back after Redis restarted"
        time.sleep(0.5)
    assert again.frontend_json == first.frontend_json


# ---------------------------------------------------------------------------- dedup, queue, deadlines


def test_two_identical_concurrent_requests_compute_once(attr_server, graphs):
    settings = unique(JOINABLE)
    computations = counter(attr_server, "circuit_attribution_computations_total")
    joins = counter(attr_server, "circuit_attribution_dedup_joins_total")
    first: list = []
    thread = threading.Thread(target=lambda: graphs.attribute(MEDIUM_PROMPT, settings, on_event=first.append))
    thread.start()
    # the second request arrives while the first is computing rows, not before or after it
    _wait_for(lambda: any(isinstance(e, Running) and e.phase.startswith("5") for e in first), 120, first)
    second = graphs.attribute(MEDIUM_PROMPT, settings)
    thread.join(300)
    results: list[GraphResult] = [first[-1], second]
    assert all(isinstance(r, GraphResult) for r in results)
    assert results[0].frontend_json == results[1].frontend_json
    assert counter(attr_server, "circuit_attribution_computations_total") == computations + 1
    assert counter(attr_server, "circuit_attribution_dedup_joins_total") == joins + 1


def test_two_replicas_sharing_redis_compute_a_graph_once(
    attr_server, launch_server, random_model_dir, transcoder_dir, redis_for_server
):
    # same model, transcoders, Redis and key prefix
    other = launch_server(*server_args(transcoder_dir, redis_for_server), model_dir=random_model_dir)
    settings = unique(JOINABLE)
    before = [counter(s, "circuit_attribution_computations_total") for s in (attr_server, other)]
    first: list = []

    def run_first():
        with AttributionClient(attr_server.target, timeout=300) as client:
            try:
                client.attribute(MEDIUM_PROMPT, settings, on_event=first.append)
            except CircuitRpcError as err:
                first.append(err)

    thread = threading.Thread(target=run_first)
    thread.start()
    in_phase_5 = lambda: any(isinstance(e, Running) and e.phase.startswith("5") for e in first)  # noqa: E731
    _wait_for(lambda: in_phase_5() or not thread.is_alive(), 120)
    assert in_phase_5(), f"the first caller never saw phase 5; its events: {first}\n" + "\n".join(
        f"--- {s.log_path}:\n{s.log()[-4000:]}" for s in (attr_server, other)
    )
    with AttributionClient(other.target, timeout=300) as client:  # joins the fleet job the first computes
        waiting: list = []
        second = client.attribute(MEDIUM_PROMPT, settings, on_event=waiting.append)
    thread.join(300)
    # either replica's worker may take the job; the other relays its progress and result
    assert sorted([first[-1].source, second.source]) == ["computed", "replica"]
    assert any(isinstance(e, Running) and e.phase.startswith("5") for e in waiting)
    assert second.frontend_json == first[-1].frontend_json
    after = [counter(s, "circuit_attribution_computations_total") for s in (attr_server, other)]
    assert sum(after) == sum(before) + 1
    other.stop()


def _background_stream(graphs, prompt, settings, seen: list, stop: threading.Event):
    """Run an Attribute stream in a thread until `stop` is set (then cancel it)."""

    def run():
        try:
            for event in graphs.stream(prompt, settings):
                seen.append(event)
                if stop.is_set():
                    return
        except CircuitRpcError as err:
            seen.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _wait_for(predicate, timeout_s=60.0, *streams: list):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        for seen in streams:
            errors = [e for e in seen if isinstance(e, CircuitRpcError)]
            assert not errors, f"a background stream failed: {errors[0]}"
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def test_full_queue_gets_resource_exhausted(attr_server, graphs):
    stop = threading.Event()
    a_seen, b_seen = [], []
    a = _background_stream(graphs, MEDIUM_PROMPT, unique(SLOW), a_seen, stop)
    _wait_for(lambda: any(isinstance(e, Running) for e in a_seen), 60, a_seen)
    b = _background_stream(graphs, MEDIUM_PROMPT, unique(SLOW), b_seen, stop)
    _wait_for(lambda: any(isinstance(e, Queued) for e in b_seen), 60, a_seen, b_seen)
    with pytest.raises(CircuitRpcError) as info:
        graphs.attribute(MEDIUM_PROMPT, unique(SLOW))
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "queue is full" in info.value.details and "limit 1 waiting" in info.value.details
    stop.set()
    for t in (a, b):
        t.join(60)
    _wait_for(
        lambda: (
            counter(attr_server, "circuit_attribution_running") == 0
            and counter(attr_server, "circuit_attribution_queue_depth") == 0
        )
    )


def test_deadline_shorter_than_the_graph_frees_the_worker(attr_server, graphs):
    # Time this graph shape once (a fixed deadline was longer than the whole graph on an idle
    # machine), then ask for the same shape under a new key with a third of that as deadline.
    t0 = time.monotonic()
    graphs.attribute(MEDIUM_PROMPT, unique(SLOW), timeout=300)
    full = time.monotonic() - t0
    with pytest.raises(CircuitRpcError) as info:
        graphs.attribute(MEDIUM_PROMPT, unique(SLOW), timeout=min(1.5, full / 3))
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    t0 = time.monotonic()
    quick = graphs.attribute(PROMPT, unique(SMALL), timeout=60)
    assert quick.source == "computed"
    assert time.monotonic() - t0 < 30  # not stuck behind the abandoned graph
    _wait_for(lambda: counter(attr_server, "circuit_attribution_running") == 0)


def test_streaming_generation_completes_while_a_graph_runs(attr_server, graphs):
    stop = threading.Event()
    seen = []
    worker = _background_stream(graphs, MEDIUM_PROMPT, unique(SLOW), seen, stop)
    _wait_for(lambda: any(isinstance(e, Running) and e.phase.startswith("5") for e in seen), 60, seen)
    with CircuitClient(attr_server.target) as client:
        chunks = list(client.stream("Once upon a time", Sampling(max_new_tokens=48, temperature=0, ignore_eos=True)))
    assert chunks[-1].finished and sum(len(c.token_ids) for c in chunks) == 48
    assert not any(isinstance(e, GraphResult) for e in seen), "the graph was meant to be still running"
    stop.set()
    worker.join(60)


def test_background_graph_can_be_fetched_later(graphs):
    settings = unique(SMALL)
    stream = graphs.stream(PROMPT, settings, background=True)
    accepted = next(stream)
    stream.close()  # detach
    deadline = time.monotonic() + 120
    while True:
        try:
            fetched = graphs.get_graph(accepted.key)
            break
        except CircuitRpcError as err:
            assert err.code == grpc.StatusCode.NOT_FOUND
            assert time.monotonic() < deadline
            time.sleep(0.2)
    assert fetched.frontend()["nodes"] and fetched.graph is not None


# ---------------------------------------------------------------------------- bad input


BAD = [
    (dict(), grpc.StatusCode.INVALID_ARGUMENT, "give exactly one of prompt"),
    (dict(prompt="  "), grpc.StatusCode.INVALID_ARGUMENT, "prompt is empty"),
    (dict(prompt="x", prompt_token_ids=[5]), grpc.StatusCode.INVALID_ARGUMENT, "got prompt, prompt_token_ids"),
    (dict(prompt_token_ids=[5, 10**6]), grpc.StatusCode.INVALID_ARGUMENT, "outside the vocabulary"),
    (dict(prompt=" ".join(["word"] * 200)), grpc.StatusCode.INVALID_ARGUMENT, "the attribution limit is 64"),
    (
        dict(prompt="hi", settings=AttributionSettings(max_feature_nodes=5000)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "max_feature_nodes: 5000 is above this server's limit of 4096",
    ),
    (
        dict(prompt="hi", settings=AttributionSettings(max_feature_nodes=0)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "max_feature_nodes: must be an integer >= 1",
    ),
    (
        dict(prompt="hi", settings=AttributionSettings(batch_size=1000)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "batch_size: 1000 is above this server's limit of 256",
    ),
    (
        dict(prompt="hi", settings=AttributionSettings(node_threshold=1.5)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "node_threshold: must be in (0, 1]",
    ),
    (
        dict(prompt="hi", settings=AttributionSettings(edge_threshold=0.0)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "edge_threshold: must be in (0, 1]",
    ),
    (
        dict(prompt="hi", settings=AttributionSettings(desired_logit_prob=2.0)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "desired_logit_prob: must be in (0, 1]",
    ),
    (
        dict(prompt="hi", settings=AttributionSettings(targets=[10**6])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "outside the vocabulary",
    ),
    # about 120 MiB with this prompt's ~3.9k active features (the slow graphs need about 12 MiB)
    (
        dict(prompt=LONG_PROMPT, settings=AttributionSettings(max_feature_nodes=4096)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "but the budget is 48 MiB",
    ),
    (
        dict(prompt="hi there", settings=AttributionSettings(qk_edges=[(0, 0, 1, 2)])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "qk_edges: edge 0: key_pos 2 is after query_pos 1",
    ),
    (  # checked against the model (2 layers) once the graph's job runs
        dict(prompt="hi there", settings=AttributionSettings(qk_edges=[(2, 0, 1, 0)])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "qk_edges: edge 0 (2, 0, 1, 0): layer must be below 2",
    ),
    (dict(request_id="no-such-request", token_index=0), grpc.StatusCode.NOT_FOUND, "'no-such-request'"),
    (dict(request_id="no-such-request"), grpc.StatusCode.INVALID_ARGUMENT, "request_id needs token_index"),
]


@pytest.mark.parametrize("kwargs, code, message", BAD, ids=[m for _, _, m in BAD])
def test_bad_input_gets_its_status_and_the_server_keeps_serving(graphs, kwargs, code, message):
    kwargs = dict(kwargs)
    prompt, settings = kwargs.pop("prompt", None), kwargs.pop("settings", SMALL)
    with pytest.raises(CircuitRpcError) as info:
        graphs.attribute(prompt, settings, **kwargs)
    assert info.value.code == code
    assert message in info.value.details
    assert graphs.attribute(PROMPT, SMALL).frontend()["nodes"]


def test_token_index_outside_the_completion(attr_server, graphs):
    with CircuitClient(attr_server.target) as client:
        gen = client.generate(PROMPT, Sampling(max_new_tokens=4, temperature=0))
    with pytest.raises(CircuitRpcError) as info:
        graphs.attribute(None, SMALL, request_id=gen.request_id, token_index=len(gen.token_ids))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"token_index: must be in [0, {len(gen.token_ids) - 1}]" in info.value.details


def test_get_graph_errors(graphs):
    with pytest.raises(CircuitRpcError) as info:
        graphs.get_graph("0" * 64)
    assert info.value.code == grpc.StatusCode.NOT_FOUND and "not in the cache" in info.value.details
    with pytest.raises(CircuitRpcError) as info:
        graphs.get_graph("not-a-key")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_without_transcoders_attribution_is_failed_precondition(server):
    with AttributionClient(server.target, timeout=30) as client:
        for call in (lambda: client.attribute("hi"), lambda: client.get_graph("0" * 64)):
            with pytest.raises(CircuitRpcError) as info:
                call()
            assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
            assert "--transcoders DIR" in info.value.details


def test_metrics_are_exported(attr_server):
    text = attr_server.metrics()
    for name in (
        "circuit_attribution_duration_seconds_bucket",
        "circuit_attribution_graph_nodes_bucket",
        "circuit_attribution_graph_edges_bucket",
        "circuit_attribution_queue_depth",
        "circuit_attribution_running",
        "circuit_graph_cache_hits_total",
        "circuit_graph_cache_misses_total",
        "circuit_graph_cache_errors_total",
        "circuit_graph_cache_bytes_total",
        "circuit_attribution_dedup_joins_total",
        "circuit_attribution_replacement_score_bucket",
        "circuit_attribution_completeness_score_bucket",
    ):
        assert name in text, name


# ---------------------------------------------------------------------------- CLI


def test_cli_attribute_and_graph(attr_server, tmp_path):
    import subprocess
    import sys

    out, again = tmp_path / "graph.json", tmp_path / "again.json"
    cli = [sys.executable, "-m", "circuit_client.cli"]
    done = subprocess.run(
        [
            *cli,
            "attribute",
            "--prompt",
            PROMPT,
            "--max-feature-nodes",
            "48",
            "--batch-size",
            "32",
            "--qk-edge",
            "1,0,5,2",
            "--out",
            str(out),
            "--target",
            attr_server.target,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip().splitlines()[-1]
    written = json.loads(out.read_text())
    assert written["nodes"] and [(x["layer"], x["head"], x["query_pos"], x["key_pos"]) for x in written["qk"]] == [
        (1, 0, 5, 2)
    ]
    fetched = subprocess.run(
        [*cli, "graph", key, "--out", str(again), "--target", attr_server.target],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert fetched.returncode == 0, fetched.stderr
    assert again.read_bytes() == out.read_bytes()
    view = tmp_path / "graph.html"  # the graph view, without --out
    shown = subprocess.run(
        [*cli, "graph", key, "--html", str(view), "--target", attr_server.target],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    data = view.read_text().split('id="graph-data">', 1)[1].split("</script>", 1)[0]
    assert json.loads(data) == {"graph": json.loads(out.read_text()), "key": key, "source": "cache"}
    missing = subprocess.run(
        [*cli, "graph", "0" * 64, "--out", str(again), "--target", attr_server.target],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr


def test_async_client(attr_server):
    import asyncio

    from circuit_client.attribution import AsyncAttributionClient

    async def go():
        async with AsyncAttributionClient(attr_server.target, timeout=300) as client:
            first = await client.attribute(PROMPT, SMALL)
            again = await client.get_graph(first.key, output="json")
            return first, again

    first, again = asyncio.run(go())
    assert again.frontend_json == first.frontend_json and again.graph is None


def test_an_unknown_job_class_number_is_invalid_argument(graphs, attr_server):
    """proto3 enums are open: a number outside JobClass parses, and must be refused by name."""
    from circuit_proto.v1 import attribution_pb2, attribution_pb2_grpc

    with grpc.insecure_channel(attr_server.target) as channel:
        stub = attribution_pb2_grpc.AttributionStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Attribute(attribution_pb2.AttributeRequest(prompt=PROMPT, job_class=356567500), timeout=60))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "job_class: 356567500 is not a job class; use one of JOB_CLASS_UNSPECIFIED" in info.value.details()
    assert graphs.attribute(PROMPT, SMALL).frontend()["nodes"]
