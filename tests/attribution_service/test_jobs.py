"""Worker pool, in-flight dedup, cancellation, deadlines and the cross-replica lock.

The engine is stood in for by `FakeEngine`: a callable that works in batches,
reports progress and checks the stop flag at every batch boundary, as the real
one does.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import pytest

from circuit_serve.cache import GraphCache, MemoryBackend, RedisBackend, RedisLink
from circuit_serve.domain.errors import Cancelled, CapacityExceeded, DeadlineExceeded
from circuit_serve.jobs import Computed, Finished, GraphJobs, GraphStats, Queued, ReplicaLocks, Running, WorkerPool


class FakeEngine:
    def __init__(self, batches: int = 5, batch_s: float = 0.05) -> None:
        self.batches = batches
        self.batch_s = batch_s
        self.calls = 0
        self.stopped = 0
        self.finished = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def work(self, tag: str = "g"):
        def run(progress, should_stop):
            self.calls += 1
            for i in range(self.batches):
                self.release.wait()
                if should_stop():
                    self.stopped += 1
                    self.finished.set()
                    raise Cancelled("stopped at a batch boundary")
                time.sleep(self.batch_s)
                progress("attribution", (i + 1) / self.batches)
            self.finished.set()
            stats = GraphStats(
                nodes_unpruned=100,
                nodes_pruned=20,
                edges_unpruned=900,
                edges_pruned=50,
                replacement_score=0.7,
                completeness_score=0.9,
                phase_seconds={"forward": 0.01},
            )
            return Computed({"graph.pb": f"graph-{tag}".encode()}, stats)

        return run


def make_jobs(metrics, *, workers=1, max_queued=4, backend=None, link=None, lock_wait_s=5.0):
    cache = GraphCache(
        backend or MemoryBackend(1 << 20), graph_format=1, ttl_s=60, max_entry_bytes=1 << 20, metrics=metrics
    )
    pool = WorkerPool(workers=workers, max_queued=max_queued, metrics=metrics)
    return GraphJobs(
        cache=cache,
        pool=pool,
        locks=ReplicaLocks(link, ttl_s=1.0),
        metrics=metrics,
        lock_wait_s=lock_wait_s,
        lock_poll_s=0.05,
    )


async def collect(jobs, key, work, **kw):
    events = []
    async with contextlib.aclosing(jobs.stream(key, work, **kw)) as stream:
        async for event in stream:
            events.append(event)
    return events


def value(registry, name, **labels):
    return registry.get_sample_value(name, labels) or 0.0


def test_compute_then_cache_hit(metrics, registry):
    engine = FakeEngine(batches=3, batch_s=0.01)

    async def go():
        jobs = make_jobs(metrics)
        first = await collect(jobs, "k", engine.work())
        second = await collect(jobs, "k", engine.work())
        return first, second

    first, second = asyncio.run(go())
    assert isinstance(first[-1], Finished) and first[-1].source == "computed"
    assert [e.fraction for e in first if isinstance(e, Running) and e.phase == "attribution"] == pytest.approx(
        [1 / 3, 2 / 3, 1]
    )
    assert second == [Finished({"graph.pb": b"graph-g"}, "cache")]
    assert engine.calls == 1
    assert value(registry, "circuit_attribution_computations_total") == 1
    assert value(registry, "circuit_attribution_graph_nodes_count", stage="pruned") == 1
    assert value(registry, "circuit_attribution_completeness_score_sum") == pytest.approx(0.9)
    assert value(registry, "circuit_attribution_running") == 0


def test_identical_concurrent_requests_share_one_computation(metrics, registry):
    engine = FakeEngine()

    async def go():
        jobs = make_jobs(metrics)
        return await asyncio.gather(*(collect(jobs, "k", engine.work()) for _ in range(3)))

    results = asyncio.run(go())
    assert engine.calls == 1
    assert all(r[-1] == Finished({"graph.pb": b"graph-g"}, "computed") for r in results)
    assert value(registry, "circuit_attribution_dedup_joins_total") == 2
    assert value(registry, "circuit_attribution_computations_total") == 1


def test_queue_positions_and_full_queue(metrics, registry):
    engine = FakeEngine(batches=2, batch_s=0.01)
    engine.release.clear()

    async def go():
        jobs = make_jobs(metrics, workers=1, max_queued=2)
        tasks = [asyncio.create_task(collect(jobs, f"k{i}", engine.work(f"{i}"))) for i in range(3)]
        await asyncio.sleep(0.1)
        assert value(registry, "circuit_attribution_queue_depth") == 2
        assert value(registry, "circuit_attribution_running") == 1
        with pytest.raises(CapacityExceeded, match="queue is full"):
            await collect(jobs, "k9", engine.work("9"))
        # an identical request joins the running one instead of queueing
        joined = asyncio.create_task(collect(jobs, "k0", engine.work("0")))
        await asyncio.sleep(0.05)
        engine.release.set()
        return await asyncio.gather(*tasks), await joined

    results, joined = asyncio.run(go())
    assert [r[-1].sections["graph.pb"] for r in results] == [b"graph-0", b"graph-1", b"graph-2"]
    assert [e.position for e in results[2] if isinstance(e, Queued)] == [2, 1]
    assert [e.position for e in results[1] if isinstance(e, Queued)] == [1]
    assert not any(isinstance(e, Queued) for e in results[0])
    assert joined[-1].sections == results[0][-1].sections
    assert engine.calls == 3
    assert value(registry, "circuit_attribution_queue_depth") == 0


def test_deadline_frees_the_worker_for_the_next_request(metrics, registry):
    engine = FakeEngine(batches=40, batch_s=0.02)

    async def go():
        jobs = make_jobs(metrics)
        with pytest.raises(DeadlineExceeded):
            await collect(jobs, "slow", engine.work("slow"), timeout_s=0.15)
        quick = FakeEngine(batches=1, batch_s=0.0)
        t0 = time.perf_counter()
        events = await collect(jobs, "next", quick.work("next"), timeout_s=5)
        return events, time.perf_counter() - t0

    events, waited = asyncio.run(go())
    assert events[-1].sections == {"graph.pb": b"graph-next"}
    assert engine.stopped == 1 and engine.calls == 1  # stopped at a batch boundary, long before 40 batches
    assert waited < 0.5
    assert value(registry, "circuit_attribution_running") == 0


def test_work_continues_while_any_caller_waits(metrics):
    engine = FakeEngine(batches=6, batch_s=0.03)

    async def go():
        jobs = make_jobs(metrics)
        patient = asyncio.create_task(collect(jobs, "k", engine.work()))
        await asyncio.sleep(0.02)
        with pytest.raises(DeadlineExceeded):
            await collect(jobs, "k", engine.work(), timeout_s=0.05)
        return await patient

    events = asyncio.run(go())
    assert events[-1].source == "computed" and engine.stopped == 0


def test_cancelling_every_caller_stops_the_work(metrics, registry):
    engine = FakeEngine(batches=50, batch_s=0.02)

    async def go():
        jobs = make_jobs(metrics)
        tasks = [asyncio.create_task(collect(jobs, "k", engine.work())) for _ in range(2)]
        await asyncio.sleep(0.1)
        tasks[0].cancel()
        await asyncio.sleep(0.1)
        assert engine.stopped == 0  # one caller still waits
        tasks[1].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(engine.finished.wait, 2)
        await asyncio.sleep(0.05)

    asyncio.run(go())
    assert engine.stopped == 1
    assert value(registry, "circuit_attribution_running") == 0
    assert value(registry, "circuit_attribution_computations_total") == 0


def test_cancel_while_queued_leaves_the_queue(metrics, registry):
    engine = FakeEngine(batches=3, batch_s=0.02)
    engine.release.clear()

    async def go():
        jobs = make_jobs(metrics, max_queued=1)
        running = asyncio.create_task(collect(jobs, "a", engine.work("a")))
        await asyncio.sleep(0.05)
        queued = asyncio.create_task(collect(jobs, "b", engine.work("b")))
        await asyncio.sleep(0.05)
        queued.cancel()
        await asyncio.sleep(0.01)
        assert value(registry, "circuit_attribution_queue_depth") == 0
        third = asyncio.create_task(collect(jobs, "c", engine.work("c")))  # room again
        engine.release.set()
        return await running, await third

    a, c = asyncio.run(go())
    assert a[-1].sections == {"graph.pb": b"graph-a"} and c[-1].sections == {"graph.pb": b"graph-c"}
    assert engine.calls == 2


def test_engine_errors_reach_every_waiter(metrics):
    def broken(progress, should_stop):
        time.sleep(0.05)
        raise ValueError("boom")

    async def go():
        jobs = make_jobs(metrics)
        return await asyncio.gather(*(collect(jobs, "k", broken) for _ in range(2)), return_exceptions=True)

    results = asyncio.run(go())
    assert all(isinstance(r, ValueError) for r in results)


# ---------------------------------------------------------------- two replicas sharing a Redis


def test_two_replicas_compute_once(redis_service, redis_prefix, registry):
    from prometheus_client import CollectorRegistry

    from circuit_serve.metrics.attribution import AttributionMetrics

    engine_a, engine_b = FakeEngine(batches=5, batch_s=0.05), FakeEngine(batches=5, batch_s=0.05)

    async def go():
        replicas = []
        for _ in range(2):
            m = AttributionMetrics(CollectorRegistry())
            link = RedisLink(redis_service, prefix=redis_prefix)
            replicas.append((make_jobs(m, backend=RedisBackend(link), link=link), m, link))
        (ja, _, la), (jb, mb, lb) = replicas
        first = asyncio.create_task(collect(ja, "k", engine_a.work("a")))
        await asyncio.sleep(0.05)
        second = await collect(jb, "k", engine_b.work("b"))
        await first
        await la.close()
        await lb.close()
        return (await first), second, mb

    first, second, mb = asyncio.run(go())
    assert engine_a.calls == 1 and engine_b.calls == 0
    assert first[-1].source == "computed" and second[-1].source == "replica"
    assert second[-1].sections == first[-1].sections
    assert any(isinstance(e, Running) and e.phase == "waiting_for_replica" for e in second)
    assert mb.replica_waits.labels("cached")._value.get() == 1


def test_replica_lock_wait_is_bounded(redis_service, redis_prefix, metrics):
    engine = FakeEngine(batches=1, batch_s=0.0)

    async def go():
        link = RedisLink(redis_service, prefix=redis_prefix)
        # a replica that took the lock and died: nobody will release it before it expires
        await link.call("set", lambda r: r.set(link.key("lock", "k"), "someone-else", px=60_000))
        jobs = make_jobs(metrics, backend=RedisBackend(link), link=link, lock_wait_s=0.3)
        t0 = time.perf_counter()
        events = await collect(jobs, "k", engine.work())
        await link.close()
        return events, time.perf_counter() - t0

    events, took = asyncio.run(go())
    assert events[-1].source == "computed" and engine.calls == 1
    assert 0.3 <= took < 2
    assert metrics.replica_waits.labels("timeout")._value.get() == 1


def test_lock_is_released_and_not_stolen(redis_service, redis_prefix):
    async def go():
        link = RedisLink(redis_service, prefix=redis_prefix)
        locks = ReplicaLocks(link, ttl_s=0.3)
        held = await locks.try_acquire("k")
        assert held is not None and await locks.try_acquire("k") is None
        await asyncio.sleep(0.5)  # renewed past its first TTL while held
        assert await locks.try_acquire("k") is None
        await held.release()
        again = await locks.try_acquire("k")
        assert again is not None
        await again.release()
        await link.close()

    asyncio.run(go())


def test_shutdown_stops_running_work(metrics):
    engine = FakeEngine(batches=100, batch_s=0.02)

    async def go():
        jobs = make_jobs(metrics)
        task = asyncio.create_task(collect(jobs, "k", engine.work()))
        await asyncio.sleep(0.1)
        jobs.pool.shutdown()
        with pytest.raises(Cancelled):
            await task

    asyncio.run(go())
    assert engine.stopped == 1
