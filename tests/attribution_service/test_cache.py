"""Graph cache: key encoding, entry format, LRU, and the Redis backend against a real Redis."""

from __future__ import annotations

import asyncio
import time

import pytest

from circuit_serve.cache import GraphCache, MemoryBackend, RedisBackend, RedisLink, entry, graph_key, is_graph_key
from circuit_serve.cache.key import key_material

SETTINGS = {
    "max_n_logits": 10,
    "desired_logit_prob": 0.95,
    "max_feature_nodes": 256,
    "batch_size": 64,
    "node_threshold": 0.8,
    "edge_threshold": 0.98,
    "targets": None,
}
SECTIONS = {"graph.pb": bytes(range(256)) * 40, "graph.json": b'{"nodes": []}'}


def key(**over):
    args = dict(model_id="m" * 64, transcoder_id="t" * 64, token_ids=[1, 5, 9], settings=SETTINGS, graph_format=1)
    args.update(over)
    return graph_key(**args)


def value(registry, name, **labels):
    return registry.get_sample_value(name, labels) or 0.0


# ---------------------------------------------------------------- key


def test_key_is_stable_and_canonical():
    k = key()
    assert is_graph_key(k)
    assert key(settings=dict(reversed(list(SETTINGS.items())))) == k  # order of settings does not matter
    assert key(token_ids=(1, 5, 9)) == k


@pytest.mark.parametrize(
    "change",
    [
        {"model_id": "x" * 64},
        {"transcoder_id": "y" * 64},
        {"token_ids": [1, 5, 10]},
        {"token_ids": [1, 5]},
        {"graph_format": 2},
        {"settings": {**SETTINGS, "node_threshold": 0.8000001}},
        {"settings": {**SETTINGS, "targets": [3, 4]}},
        {"settings": {**SETTINGS, "batch_size": 32}},
        {"settings": {k: v for k, v in SETTINGS.items() if k != "targets"}},
    ],
)
def test_key_changes_with_every_input(change):
    assert key(**change) != key()


def test_key_material_is_versioned_json_not_pickle():
    raw = key_material(model_id="m", transcoder_id="t", token_ids=[1], settings={"a": 1.5}, graph_format=3)
    assert raw.startswith(b"{") and b'"key_version":1' in raw and b'"graph_format":3' in raw
    with pytest.raises(ValueError):
        key(settings={"x": float("nan")})
    with pytest.raises(TypeError):
        key(settings={"x": object()})


# ---------------------------------------------------------------- entry format


@pytest.mark.parametrize("codec", list(entry.Codec))
def test_entry_round_trip_is_exact(codec):
    blob = entry.encode("k1", SECTIONS, graph_format=1, codec=codec)
    raw = sum(map(len, SECTIONS.values()))
    assert len(blob) < raw if codec == entry.Codec.ZLIB else len(blob) > raw  # compressed, or stored as is
    sections = entry.decode("k1", blob, graph_format=1)
    assert sections == SECTIONS and {k: bytes(v) for k, v in sections.items()} == SECTIONS


def test_stored_entry_sections_are_views_into_the_blob_not_copies():
    blob = entry.encode("k1", SECTIONS, graph_format=1, codec=entry.Codec.STORED)
    sections = entry.decode("k1", blob, graph_format=1)
    assert all(isinstance(v, memoryview) and v.readonly and v.obj is blob for v in sections.values())


def test_version_1_entries_are_refused_not_misread():
    """A version-1 entry (zlib, no codec byte) is refused, so the graph is recomputed."""
    import hashlib
    import struct
    import zlib

    body = entry.encode("k1", SECTIONS, graph_format=1)[entry.HEADER_BYTES :]
    packed = zlib.compress(body)
    v1 = struct.pack(">4sHH32sII", b"CSGE", 1, 1, hashlib.sha256(b"k1").digest(), zlib.crc32(packed), len(body))
    with pytest.raises(entry.BadEntry, match="entry format 1, this server reads 2"):
        entry.decode("k1", v1 + packed, graph_format=1)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b[:20],  # truncated header
        lambda b: b[:-3],  # truncated body
        lambda b: b"XXXX" + b[4:],  # magic
        lambda b: b[:4] + b"\x00\x09" + b[6:],  # entry format from the future/past
        lambda b: b[:6] + b"\x00\x02" + b[8:],  # other graph format
        lambda b: b[:-1] + bytes([b[-1] ^ 1]),  # bit flip in the body
        lambda b: b[:8] + bytes(32) + b[40:],  # stored for another key
        lambda b: b[:40] + b"\x07" + b[41:],  # unknown codec
        lambda b: b[:48] + b"\x00\x00\x00\x01" + b[52:],  # body length
    ],
)
@pytest.mark.parametrize("codec", list(entry.Codec))
def test_bad_entries_are_refused(mangle, codec):
    blob = entry.encode("k1", SECTIONS, graph_format=1, codec=codec)
    with pytest.raises(entry.BadEntry):
        entry.decode("k1", mangle(blob), graph_format=1)


# ---------------------------------------------------------------- in-process LRU


def test_memory_backend_lru_and_ttl():
    now = [0.0]
    lru = MemoryBackend(max_bytes=30, clock=lambda: now[0])

    async def go():
        await lru.put("a", b"x" * 10, ttl_s=100)
        await lru.put("b", b"y" * 10, ttl_s=100)
        await lru.put("c", b"z" * 10, ttl_s=5)
        assert await lru.get("a") == b"x" * 10  # a is now most recent
        await lru.put("d", b"w" * 10, ttl_s=100)  # evicts b (least recently used)
        assert await lru.get("b") is None
        assert await lru.get("a") is not None and await lru.get("c") is not None
        now[0] = 6.0
        assert await lru.get("c") is None  # expired
        await lru.put("huge", b"h" * 31, ttl_s=100)  # larger than the whole cache: not stored
        assert await lru.get("huge") is None
        assert lru.size_bytes == 20

    asyncio.run(go())


def test_graph_cache_counts_and_drops_corrupt_entries(metrics, registry):
    backend = MemoryBackend(max_bytes=1 << 20)
    cache = GraphCache(backend, graph_format=1, ttl_s=60, max_entry_bytes=1 << 20, metrics=metrics)
    k = key()

    async def go():
        assert await cache.get(k) is None
        assert await cache.put(k, SECTIONS)
        assert await cache.get(k) == SECTIONS
        blob = await backend.get(k)
        await backend.put(k, blob[:-5], ttl_s=60)
        assert await cache.get(k) is None  # corrupt: a miss...
        assert await backend.get(k) is None  # ...and deleted
        old = GraphCache(backend, graph_format=0, ttl_s=60, max_entry_bytes=1 << 20, metrics=metrics)
        await old.put(k, SECTIONS)
        assert await cache.get(k) is None  # old graph format is never served

    asyncio.run(go())
    assert value(registry, "circuit_graph_cache_hits_total", backend="memory") == 1
    assert value(registry, "circuit_graph_cache_misses_total", backend="memory") == 3
    assert value(registry, "circuit_graph_cache_bad_entries_total", backend="memory") == 2


def test_graph_cache_skips_entries_above_the_size_limit(metrics, registry):
    cache = GraphCache(MemoryBackend(1 << 20), graph_format=1, ttl_s=60, max_entry_bytes=100, metrics=metrics)

    async def go():
        assert not await cache.put(key(), SECTIONS)
        assert await cache.get(key()) is None

    asyncio.run(go())
    assert value(registry, "circuit_graph_cache_skipped_total", backend="memory", reason="too_large") == 1


# ---------------------------------------------------------------- Redis


def test_redis_cache_round_trip_and_ttl(redis_service, redis_prefix, metrics, registry):
    async def go():
        link = RedisLink(redis_service, prefix=redis_prefix)
        cache = GraphCache(RedisBackend(link), graph_format=1, ttl_s=0.3, max_entry_bytes=1 << 20, metrics=metrics)
        k = key()
        assert await cache.get(k) is None
        assert await cache.put(k, SECTIONS)
        got = await cache.get(k)
        assert got == SECTIONS and {n: bytes(v) for n, v in got.items()} == SECTIONS  # read-only views of the blob
        await asyncio.sleep(0.5)
        assert await cache.get(k) is None  # expired by Redis itself
        await link.close()

    asyncio.run(go())
    assert value(registry, "circuit_graph_cache_hits_total", backend="redis") == 1
    assert value(registry, "circuit_graph_cache_misses_total", backend="redis") == 2
    assert value(registry, "circuit_graph_cache_bytes_total", backend="redis", direction="written") > 0


def test_redis_corrupt_entry_is_deleted(redis_service, redis_prefix, metrics, registry):
    async def go():
        link = RedisLink(redis_service, prefix=redis_prefix)
        cache = GraphCache(RedisBackend(link), graph_format=1, ttl_s=60, max_entry_bytes=1 << 20, metrics=metrics)
        k = key()
        await link.call("set", lambda r: r.set(link.key("graph", k), b"CSGE garbage"))
        assert await cache.get(k) is None
        assert await link.call("exists", lambda r: r.exists(link.key("graph", k))) == 0
        await link.close()

    asyncio.run(go())
    assert value(registry, "circuit_graph_cache_bad_entries_total", backend="redis") == 1


def test_redis_down_is_a_counted_miss_and_recovers_by_itself(private_redis, metrics, registry):
    async def go():
        link = RedisLink(private_redis.url, prefix="t:", timeout_s=0.3, retry_after_s=0.2, max_retry_after_s=0.4)
        cache = GraphCache(RedisBackend(link), graph_format=1, ttl_s=60, max_entry_bytes=1 << 20, metrics=metrics)
        k = key()
        assert await cache.put(k, SECTIONS)
        private_redis.stop()
        t0 = time.perf_counter()
        assert await cache.get(k) is None  # fails: counted, a miss
        left = link.first_pause_left()
        assert left is not None and 0 < left <= 0.2  # one failure after answering: a moment, worth waiting out
        assert not await cache.put(k, SECTIONS)
        assert await cache.get(k) is None  # breaker open: fails fast without touching the network
        assert time.perf_counter() - t0 < 2.0
        await asyncio.sleep(left + 0.05)
        assert await cache.get(k) is None  # fails again after the pause: an outage
        assert link.first_pause_left() is None
        private_redis.start()
        deadline = time.monotonic() + 5
        while not await cache.put(k, SECTIONS):  # reconnects by itself once the pause ends
            assert time.monotonic() < deadline, "the cache did not come back after Redis restarted"
            await asyncio.sleep(0.1)
        assert await cache.get(k) == SECTIONS
        await link.close()

    asyncio.run(go())
    assert value(registry, "circuit_graph_cache_errors_total", backend="redis", op="get") >= 2
    assert value(registry, "circuit_graph_cache_errors_total", backend="redis", op="put") >= 1
