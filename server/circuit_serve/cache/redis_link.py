"""One asyncio Redis connection shared by the graph cache, replica locks and the
served-completions store, with short timeouts and a circuit breaker.

Redis is an optimisation here, never a dependency of a call's success:
- every command is bounded by `timeout_s` (connect and read);
- a failure opens the breaker for `retry_after_s` (doubling up to
  `max_retry_after_s`), during which calls fail fast with `RedisUnavailable`
  without touching the network, so a dead server is not hammered;
- the first call after the pause tries again; success closes the breaker. The
  connection pool reconnects by itself, so a restarted Redis is picked up with
  no operator action.
Callers catch `RedisUnavailable`, count it, and carry on without Redis.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def redact_url(url: str) -> str:
    """`url` with any password replaced by *** (for logs)."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.hostname or ""
        netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "<redis url>"


class RedisUnavailable(Exception):
    """Redis did not answer (or is in its back-off pause); `skipped` when not even tried."""

    def __init__(self, op: str, reason: str, *, skipped: bool) -> None:
        super().__init__(f"redis {op}: {reason}")
        self.op = op
        self.skipped = skipped


class RedisLink:
    """A prefixed, breaker-guarded `redis.asyncio.Redis` client."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "circuit:",
        timeout_s: float = 0.5,
        retry_after_s: float = 0.5,
        max_retry_after_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        import redis.asyncio as aioredis  # server extra; imported only when Redis is configured
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.url = url
        self.prefix = prefix
        self.timeout_s = timeout_s
        self._retry_after_s = retry_after_s
        self._max_retry_after_s = max_retry_after_s
        self._pause_s = retry_after_s
        self._down_until = 0.0
        self._failures = 0  # failed calls since the last success
        self._clock = clock
        self._client: Any = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )

    @property
    def available(self) -> bool:
        """False while the breaker is open (the last call failed and the pause has not ended)."""
        return self._clock() >= self._down_until

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def call(self, op: str, fn: Callable[[Any], Awaitable[T]]) -> T:
        """Run `fn(client)`; raise `RedisUnavailable` on any failure or while paused."""
        if not self.available:
            raise RedisUnavailable(op, "paused after an earlier failure", skipped=True)
        try:
            result = await asyncio.wait_for(fn(self._client), timeout=self.timeout_s * 4)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # redis errors, OSError, timeouts: all mean "no Redis now"
            self._trip(op, exc)
            raise RedisUnavailable(op, f"{type(exc).__name__}: {exc}", skipped=False) from exc
        if self._pause_s != self._retry_after_s:
            log.info("redis at %s is answering again", redact_url(self.url))
        self._pause_s = self._retry_after_s
        self._failures = 0
        return result

    def first_pause_left(self) -> float | None:
        """Seconds left of the breaker's pause when one call failed after the link was answering (a
        loaded moment, worth waiting out); None when the breaker is closed or calls keep failing."""
        if self.available or self._failures != 1:
            return None
        return max(0.0, self._down_until - self._clock())

    def _trip(self, op: str, exc: BaseException) -> None:
        self._failures += 1
        was_ok = self._pause_s == self._retry_after_s
        self._down_until = self._clock() + self._pause_s
        if was_ok:
            log.warning(
                "redis %s failed (%s: %s); working without Redis, retrying in %.1fs",
                op,
                type(exc).__name__,
                exc,
                self._pause_s,
            )
        self._pause_s = min(self._pause_s * 2, self._max_retry_after_s)

    async def ping(self) -> bool:
        try:
            return bool(await self.call("ping", lambda r: r.ping()))
        except RedisUnavailable:
            return False

    async def close(self) -> None:
        try:
            await self._client.aclose()
        except Exception:  # closing a dead connection may fail; nothing to do about it
            pass
