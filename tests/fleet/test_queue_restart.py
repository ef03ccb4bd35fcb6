"""A Redis that restarted empty under running replicas: the queue makes its group again inside the
worker's own read, so the job queued right after the restart is delivered and no Redis call of the
replica is paused by the breaker (a real Redis, stopped and started; no server process)."""

from __future__ import annotations

import asyncio

from circuit_serve.cache.redis_link import RedisLink
from circuit_serve.jobs.fleet_queue import FleetQueue
from circuit_serve.jobs.status import JobSpec
from circuit_serve.testing.redis_server import RedisServer


def test_a_job_queued_after_an_empty_restart_is_read_without_tripping_the_breaker():
    server = RedisServer().start()

    async def go():
        link = RedisLink(server.url, prefix="restart-test:", timeout_s=2.0)
        queue = FleetQueue(link, max_queued=8, max_queued_per_tenant=8, ttl_s=60)
        await queue.ensure_groups()
        first = JobSpec(key="a" * 64, payload={"n": 1})
        assert await queue.submit(first) == "queued"
        assert (await queue.read("interactive", "replica-1"))[1] == first

        server.stop()  # started with no persistence: it comes back with no streams and no group
        server.start()
        while not await link.ping():  # the pooled connection died with the old server: one failure, a pause
            await asyncio.sleep(0.2)
        second = JobSpec(key="b" * 64, payload={"n": 2})
        assert await queue.submit(second) == "queued"  # XADD makes the stream again, not the group
        got = await queue.read("interactive", "replica-1")
        assert got is not None and got[1] == second
        assert link.available, "NOGROUP after a restart tripped the breaker: every Redis call would pause"
        assert await queue.reclaim("background", "replica-1", 1) is None  # a class stream never written
        await link.close()

    try:
        asyncio.run(go())
    finally:
        server.close()
