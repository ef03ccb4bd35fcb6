"""Served-completions store: in memory, in Redis, expiry, bad indices, Redis down."""

from __future__ import annotations

import asyncio

import pytest

from circuit_serve.cache import RedisLink
from circuit_serve.completions import CompletionStore
from circuit_serve.domain.errors import InvalidRequest, NotFound, NotSupported
from circuit_serve.domain.features import FeatureRef, Intervention, Op


def test_context_for_each_completion_token(metrics):
    async def go():
        store = CompletionStore(ttl_s=60, max_entries=10, metrics=metrics)
        await store.record("r1", [1, 7, 8], [20, 21, 22])
        item = await store.get("r1")
        assert item.context_for(0) == [1, 7, 8]
        assert item.context_for(2) == [1, 7, 8, 20, 21]
        for bad in (-1, 3):
            with pytest.raises(InvalidRequest, match=r"token_index: must be in \[0, 2\]"):
                item.context_for(bad)
        with pytest.raises(NotFound, match="'nope'"):
            await store.get("nope")

    asyncio.run(go())


STEERED = (
    Intervention(FeatureRef(1, 7), Op.SET, 2.5, positions=(3, 4)),
    Intervention(FeatureRef(0, 2), Op.ADD, -1.0, generated=True, all_prompt=True),
)


def test_a_steered_completion_is_kept_with_its_interventions_and_refused_for_audit(
    redis_service, redis_prefix, metrics
):
    async def go():
        a_link, b_link = RedisLink(redis_service, prefix=redis_prefix), RedisLink(redis_service, prefix=redis_prefix)
        a = CompletionStore(ttl_s=60, max_entries=10, metrics=metrics, link=a_link)
        b = CompletionStore(ttl_s=60, max_entries=10, metrics=metrics, link=b_link)
        a.record_nowait("steered", [1, 2], [3, 4], interventions=STEERED)
        a.record_nowait("plain", [1, 2], [3, 4])
        await asyncio.sleep(0.05)  # the Redis copy is written in a task
        for store in (a, b):  # in memory, and through Redis on another replica
            got = await store.get("steered")
            assert got.interventions == STEERED
            with pytest.raises(
                NotSupported, match=r"'steered' was a steered completion \(2 interventions: set 1:7, add 0:2\)"
            ):
                got.check_auditable()
            (await store.get("plain")).check_auditable()  # unsteered: auditable
            assert (await store.get("plain")).interventions == ()
        await a_link.close()
        await b_link.close()

    asyncio.run(go())


def test_memory_store_expires_and_is_bounded(metrics):
    now = [0.0]

    async def go():
        store = CompletionStore(ttl_s=10, max_entries=2, metrics=metrics, clock=lambda: now[0])
        for i in range(3):
            await store.record(f"r{i}", [1], [2])
        with pytest.raises(NotFound):
            await store.get("r0")  # evicted (bounded)
        await store.get("r2")
        now[0] = 11
        with pytest.raises(NotFound):
            await store.get("r2")  # expired

    asyncio.run(go())


def test_redis_store_is_shared_between_replicas(redis_service, redis_prefix, metrics):
    async def go():
        a_link, b_link = RedisLink(redis_service, prefix=redis_prefix), RedisLink(redis_service, prefix=redis_prefix)
        a = CompletionStore(ttl_s=0.5, max_entries=10, metrics=metrics, link=a_link)
        b = CompletionStore(ttl_s=0.5, max_entries=10, metrics=metrics, link=b_link)
        a.record_nowait("req-1", [1, 2], [3, 4])
        await asyncio.sleep(0.05)  # the Redis copy is written in a task
        got = await b.get("req-1")
        assert got.prompt_token_ids == (1, 2) and got.completion_token_ids == (3, 4)
        await asyncio.sleep(0.7)
        with pytest.raises(NotFound):
            await b.get("req-1")  # expired in Redis
        await a_link.close()
        await b_link.close()

    asyncio.run(go())


def test_recording_survives_redis_down(private_redis, metrics, registry):
    async def go():
        link = RedisLink(private_redis.url, prefix="t:", timeout_s=0.3)
        store = CompletionStore(ttl_s=60, max_entries=10, metrics=metrics, link=link)
        private_redis.stop()
        await store.record("r", [1], [2, 3])  # does not raise
        assert (await store.get("r")).completion_token_ids == (2, 3)  # the local copy
        with pytest.raises(NotFound):
            await store.get("other")
        await link.close()

    asyncio.run(go())
    assert registry.get_sample_value("circuit_served_completions_errors_total", {"op": "put"}) == 1
