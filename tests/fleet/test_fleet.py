"""Three replicas of the demo model on one Redis: `full` (--role all, the folder's one vLLM) and
`a1`, `a2` (--role attribution). Graphs submitted to one replica are computed by any, exactly once;
audits by request_id work on a replica that did not serve the completion; a backfill killed halfway
resumes without recomputing; a rolling restart of a replica fails no request."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from circuit_client import CircuitClient, CircuitRpcError, Sampling
from circuit_client.attribution import AttributionClient, AttributionSettings
from fleet.conftest import TEST_ENV, Fleet

TINY = AttributionSettings(max_feature_nodes=8, max_n_logits=2, batch_size=64)


@pytest.fixture(scope="module")
def fleet(demo_model_dir, fleet_redis, tmp_path_factory):
    f = Fleet(
        demo_model_dir,
        demo_model_dir / "transcoders",
        fleet_redis.url,
        tmp_path_factory.mktemp("fleet-logs"),
        flags=["--attribution-max-queued", "256", "--attribution-workers", "1"],
    )
    try:
        f.start("full", role="all")
        f.start("a1")
        f.start("a2")
        yield f
    finally:
        f.stop()


def ids(i: int, tail: int = 0) -> list[int]:
    """Distinct inputs for distinct `i` (the demo tokenizer knows few words: token ids instead)."""
    return [10 + i % 40, 60 + (i // 40) % 40, 100 + tail]


def test_thirty_graphs_through_one_replica_are_computed_once_across_the_fleet(fleet: Fleet):
    before = fleet.computations()
    settings = AttributionSettings(max_feature_nodes=12, max_n_logits=2, batch_size=64, edge_threshold=0.97)
    with AttributionClient(fleet.servers["full"].target, timeout=300) as graphs:
        with ThreadPoolExecutor(30) as pool:
            results = list(
                pool.map(
                    lambda i: graphs.attribute(prompt_token_ids=ids(i), settings=settings, output="json"), range(30)
                )
            )
    assert len({r.key for r in results}) == 30
    after = fleet.computations()
    delta = {n: after[n] - before[n] for n in after}
    assert sum(delta.values()) == 30, delta  # each key computed exactly once across the fleet
    assert sum(1 for d in delta.values() if d > 0) > 1, delta
    assert {r.source for r in results} <= {"computed", "replica"}


def test_attribution_replica_serves_no_generation(fleet: Fleet):
    with CircuitClient(fleet.servers["a1"].target, timeout=30) as client:
        assert client.health() == "SERVING"
        assert client.health("circuit.v1.Generation") == "NOT_SERVING"
        with pytest.raises(CircuitRpcError) as info:
            client.generate("hi", Sampling(max_new_tokens=1))
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "--role attribution" in info.value.details


def test_audit_by_request_id_on_another_replica(fleet: Fleet):
    with CircuitClient(fleet.servers["full"].target, timeout=60) as client:
        served = client.generate("the capital of paris is", Sampling(max_new_tokens=3))
    with AttributionClient(fleet.servers["a2"].target, timeout=120) as graphs:
        deadline = time.monotonic() + 10
        while True:  # the completion reaches Redis a moment after the Generate response
            try:
                result = graphs.attribute(request_id=served.request_id, token_index=1, settings=TINY)
                break
            except CircuitRpcError as err:
                assert err.code == grpc.StatusCode.NOT_FOUND and time.monotonic() < deadline, err
                time.sleep(0.1)
        status = graphs.get_job(result.key)
    assert status.state == "done" and status.replica in fleet.servers


def test_backfill_killed_halfway_resumes_without_recomputing(fleet: Fleet, tmp_path):
    items = tmp_path / "prompts.jsonl"
    items.write_text("".join(json.dumps({"prompt_token_ids": ids(i, tail=1)}) + "\n" for i in range(200)))
    out = tmp_path / "graphs"
    cmd = [sys.executable, "-m", "circuit_client.cli", "attribute-batch", "--target", fleet.servers["full"].target,
           str(items), "--out", str(out), "--parallel", "6", "--max-feature-nodes", "8", "--max-n-logits", "2",
           "--batch-size", "64"]  # fmt: skip
    before = fleet.computations()
    first = subprocess.Popen(cmd, env={**os.environ, **TEST_ENV}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    index = out / "index.jsonl"
    deadline = time.monotonic() + 300
    while not (index.is_file() and len(index.read_text().splitlines()) >= 100):
        assert first.poll() is None, first.stdout.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    halfway = len(index.read_text().splitlines())
    assert halfway < 200
    second = subprocess.run(cmd, env={**os.environ, **TEST_ENV}, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert f"{halfway} already done" in second.stderr or "already done" in second.stderr
    rows = [json.loads(line) for line in index.read_text().splitlines()]
    assert sorted(r["line"] for r in rows) == list(range(200))
    assert all((out / r["file"]).is_file() and r["replacement_score"] is not None for r in rows)
    after = fleet.computations()
    assert sum(after[n] - before[n] for n in after) == 200  # nothing computed twice


def test_rolling_restart_of_a_replica_fails_no_request(fleet: Fleet):
    stop = threading.Event()
    done: list[str] = []
    failed: list[BaseException] = []
    counter = iter(range(10_000))

    def steady():
        with AttributionClient(fleet.servers["full"].target, timeout=120) as graphs:
            while not stop.is_set():
                i = next(counter)
                settings = AttributionSettings(max_feature_nodes=8, max_n_logits=2, batch_size=64, edge_threshold=0.96)
                try:
                    done.append(graphs.attribute(prompt_token_ids=ids(i, tail=2), settings=settings, output="json").key)
                except BaseException as exc:  # noqa: BLE001 (every failure is the finding)
                    failed.append(exc)
                time.sleep(0.05)

    threads = [threading.Thread(target=steady) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(2)
        assert fleet.servers["a2"].stop(grace_s=30) == 0  # SIGTERM: drain
        fleet.start("a2")
        time.sleep(3)
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    assert not failed, failed[:3]
    assert len(done) > 10
