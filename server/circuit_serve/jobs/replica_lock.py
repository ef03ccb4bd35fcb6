"""Cross-replica lock on a graph key, so replicas sharing a Redis compute a graph once.

`SET <prefix>lock:<key> <token> NX PX <ttl>` takes the lock; a background task
extends it (only while it still holds our token) every third of the TTL, so a
replica that dies lets the lock expire on its own. Release deletes it only if
the token is still ours (compare-and-delete in one Lua script).

Without Redis (not configured, or not answering) there is no lock: the caller
computes, which is always correct, only possibly duplicated across replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets

from circuit_serve.cache.redis_link import RedisLink, RedisUnavailable

log = logging.getLogger(__name__)

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
_EXTEND = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""


class HeldLock:
    """A lock this replica holds; `release()` it when the graph is cached (or on failure)."""

    def __init__(self, link: RedisLink, name: str, token: str, ttl_ms: int) -> None:
        self._link = link
        self.name = name
        self.token = token
        self._ttl_ms = ttl_ms
        self._renewer = asyncio.create_task(self._renew(), name=f"lock-renew-{name[-12:]}")

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self._ttl_ms / 3000)
            try:
                still_ours = await self._link.call(
                    "lock_extend", lambda r: r.eval(_EXTEND, 1, self.name, self.token, self._ttl_ms)
                )
            except RedisUnavailable:
                continue  # it may expire; the worst case is a duplicate computation elsewhere
            if not still_ours:
                log.warning("lock %s expired while computing; another replica may compute the same graph", self.name)
                return

    async def release(self) -> None:
        self._renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._renewer
        try:
            await self._link.call("lock_release", lambda r: r.eval(_RELEASE, 1, self.name, self.token))
        except RedisUnavailable:
            pass  # it expires by itself


class NoLock:
    """Stands in for a lock where there is none to take (no Redis, or Redis not answering)."""

    async def release(self) -> None:
        return None


class ReplicaLocks:
    def __init__(self, link: RedisLink | None, *, ttl_s: float = 30.0) -> None:
        self.link = link
        self.ttl_ms = max(1, int(ttl_s * 1000))

    async def try_acquire(self, key: str) -> HeldLock | NoLock | None:
        """A lock to release when done if this replica may compute `key` (a `NoLock` when there
        is no Redis to lock in); None while another replica holds the lock."""
        if self.link is None:
            return NoLock()
        name = self.link.key("lock", key)
        token = secrets.token_hex(16)
        try:
            got = await self.link.call("lock_acquire", lambda r: r.set(name, token, nx=True, px=self.ttl_ms))
        except RedisUnavailable:
            return NoLock()
        return HeldLock(self.link, name, token, self.ttl_ms) if got else None
