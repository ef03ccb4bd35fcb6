"""Three attribution-only replicas of the random demo model (slow graphs: batch size 1 over up to
1,500 features): a replica SIGKILLed while computing a graph has it finished by another, the caller on a
surviving replica gets the same graph; a cancel sent to one replica stops the graph another computes."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from dataclasses import replace

import grpc
import pytest

from circuit_client import CircuitRpcError
from circuit_client.attribution import Accepted, AttributionClient, AttributionSettings
from fleet.conftest import Fleet, metric

PROMPT = "The quick brown fox jumps over the lazy dog. The cat sat on the mat. The dog slept by the door."
SLOW = AttributionSettings(batch_size=1, max_feature_nodes=1500)


@pytest.fixture(scope="module")
def fleet(random_model, fleet_redis, tmp_path_factory):
    model, tc = random_model
    f = Fleet(
        model,
        tc,
        fleet_redis.url,
        tmp_path_factory.mktemp("failover-logs"),
        flags=[
            "--attribution-max-prompt-tokens", "64",
            "--attribution-max-feature-nodes", "4096",
            "--attribution-max-batch-size", "256",
            "--attribution-memory-budget-gib", "1",
        ],
    )  # fmt: skip
    try:
        for name in ("r1", "r2", "r3"):
            f.start(name)
        yield f
    finally:
        f.stop()


def unique(settings: AttributionSettings) -> AttributionSettings:
    return replace(settings, edge_threshold=0.9 + 0.09 * (uuid.uuid4().int % 10_000) / 10_000)


def submit_background(fleet: Fleet, via: str, settings: AttributionSettings) -> str:
    """Queue a background graph through replica `via` and hang up at once; its key."""
    with AttributionClient(fleet.servers[via].target, timeout=60) as graphs:
        for event in graphs.stream(PROMPT, settings, background=True, output="json"):
            assert isinstance(event, Accepted)
            return event.key
    raise AssertionError("no Accepted event")


def wait_running(fleet: Fleet, key: str, via: str, timeout_s: float = 60):
    with AttributionClient(fleet.servers[via].target, timeout=30) as graphs:
        deadline = time.monotonic() + timeout_s
        while True:
            status = graphs.get_job(key)
            if status.state == "running" and status.phase.startswith("5"):
                return status
            assert time.monotonic() < deadline, status
            time.sleep(0.05)


def test_sigkill_of_the_computing_replica_another_finishes_the_graph(fleet: Fleet):
    settings = unique(SLOW)
    key = submit_background(fleet, "r1", settings)
    running = wait_running(fleet, key, "r1")
    victim = running.replica
    survivor = next(n for n in fleet.servers if n != victim)
    before = {n: c for n, c in fleet.computations().items() if n != victim}
    got: list = []

    def wait_for_graph():
        with AttributionClient(fleet.servers[survivor].target, timeout=300) as graphs:
            got.append(graphs.attribute(PROMPT, settings, output="json"))

    caller = threading.Thread(target=wait_for_graph)
    caller.start()
    time.sleep(0.5)  # the caller has joined the job
    fleet.servers[victim].process.send_signal(signal.SIGKILL)
    fleet.servers[victim].process.wait(10)
    caller.join(300)
    assert got, "the caller on a surviving replica got no graph"
    result = got[0]
    after = {n: c for n, c in fleet.computations().items() if n != victim}
    assert sum(after[n] - before[n] for n in after) == 1  # only the killed attempt was computed twice
    with AttributionClient(fleet.servers[survivor].target, timeout=30) as graphs:
        status = graphs.get_job(key)
    assert status.state == "done" and status.replica != victim and status.deliveries == 2
    assert (
        sum(metric(fleet.servers[n], "circuit_attribution_fleet_jobs_total", outcome="reclaimed") for n in after) == 1
    )
    # the same graph computed without a kill: drop it from the cache and compute it again
    r = fleet.redis()
    r.delete(f"{fleet.prefix}graph:{key}", f"{fleet.prefix}job:{key}")
    with AttributionClient(fleet.servers[survivor].target, timeout=300) as graphs:
        again = graphs.attribute(PROMPT, settings, output="json")
    assert again.source in ("computed", "replica")
    assert again.frontend_json == result.frontend_json
    fleet.start(victim)  # the module's later tests have three replicas again


def test_cancel_on_one_replica_stops_the_graph_running_on_another(fleet: Fleet):
    settings = unique(SLOW)
    seen: list = []

    def caller():
        try:
            with AttributionClient(fleet.servers["r1"].target, timeout=300) as graphs:
                for event in graphs.stream(PROMPT, settings, output="json"):
                    seen.append(event)
        except CircuitRpcError as err:
            seen.append(err)

    thread = threading.Thread(target=caller)
    thread.start()
    while not seen:
        time.sleep(0.02)
    key = seen[0].key
    running = wait_running(fleet, key, "r1")
    worker = fleet.servers[running.replica]
    other = next(n for n in fleet.servers if n != running.replica)
    computed_before = metric(worker, "circuit_attribution_computations_total")
    with AttributionClient(fleet.servers[other].target, timeout=30) as graphs:
        t0 = time.monotonic()
        outcome = graphs.cancel_job(key)
        assert outcome.cancelled, outcome
        while (status := graphs.get_job(key)).state != "cancelled":
            assert time.monotonic() - t0 < 5, status
            time.sleep(0.02)
        stopped_after = time.monotonic() - t0
    thread.join(60)
    assert isinstance(seen[-1], CircuitRpcError) and seen[-1].code == grpc.StatusCode.CANCELLED
    assert stopped_after < 2.0  # the next stop check: one progress poll and one batch of one row
    assert metric(worker, "circuit_attribution_computations_total") == computed_before
    assert metric(worker, "circuit_attribution_fleet_jobs_total", outcome="cancelled") >= 1
    assert metric(worker, "circuit_attribution_running") == 0
