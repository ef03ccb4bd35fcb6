"""The fleet's graph queue on Redis Streams: one stream per class, one consumer group, job status.

Keys (under the server's `--redis-prefix`):

| key                       | type   | holds                                                              |
|---------------------------|--------|--------------------------------------------------------------------|
| `jobs:<class>`            | stream | one entry per queued job (`key`, `spec` JSON); group `workers`     |
| `jobs:dead`               | stream | jobs handed out more than `--job-max-deliveries` times             |
| `job:<graph key>`         | hash   | state, class, tenant, waiters, background, cancel, phase, fraction, |
|                           |        | replica, reason, deliveries, entry id, queued_at (ms)             |
| `jobs:queued`             | hash   | waiting counts: `all`, `class:<class>`, `tenant:<tenant>`          |

Every change of a job is one Lua script, so two replicas never see half of one:
1. `submit`: a job already queued or running is joined (`waiters` + 1); otherwise the fleet-wide
   limits are checked (`all` < max_queued; `tenant:<t>` < max_queued_per_tenant), the counts
   raised, the entry added (XADD) and the status written as `queued`;
2. `take` (a worker got the entry by XREADGROUP or XAUTOCLAIM): the waiting counts are lowered
   once, then the job is `running` on that replica, or `cancelled` if a cancel came first;
3. `progress` (every `--job-poll` while computing): phase and fraction written, the cancel flag read;
4. `finish`: the final state written, the entry acknowledged (XACK) and deleted (XDEL);
5. `leave` / `cancel`: a caller goes (waiters - 1) or CancelJob asks; either stops the job unless
   someone else waits or it is a background job: a queued job becomes `cancelled` at once, a
   running one gets its cancel flag, which the computing replica reads at its next progress write;
6. `dead_letter`: the entry is copied to `jobs:dead`, acknowledged, and the job `failed` with the reason.

The heartbeat (XCLAIM ... JUSTID, only while the entry is still this consumer's) and the
reclaim of entries idle past `--job-reclaim-after` (XAUTOCLAIM) are in jobs/fleet_worker.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any, TypeVar

from redis.exceptions import ResponseError

from circuit_serve.cache.redis_link import RedisLink
from circuit_serve.domain.errors import CapacityExceeded
from circuit_serve.jobs.status import CLASSES, CancelOutcome, JobSpec, JobStatus

GROUP = "workers"
# How long a fleet job's relay (jobs/runner.py) or the hand-over of its computed graph
# (jobs/fleet_worker.py) waits out failing Redis calls: under load one slow command opens the
# link's breaker and every call fails fast for its pause; that is a moment, not an outage.
REDIS_PATIENCE_S = 5.0
T = TypeVar("T")

_UNCOUNT = """
local function uncount(job, counters)
  local st = redis.call('hmget', job, 'counted', 'tenant', 'class')
  if st[1] == '1' then
    redis.call('hset', job, 'counted', '0')
    redis.call('hincrby', counters, 'all', -1)
    redis.call('hincrby', counters, 'class:' .. st[3], -1)
    if st[2] and st[2] ~= '' then redis.call('hincrby', counters, 'tenant:' .. st[2], -1) end
  end
end
"""

# KEYS: job, stream, counters. ARGV: spec json, class, tenant, max_queued, max_per_tenant, now_ms,
# ttl_ms, background, key
_SUBMIT = """
local state = redis.call('hget', KEYS[1], 'state')
if state == 'queued' or state == 'running' then
  redis.call('hincrby', KEYS[1], 'waiters', 1)
  if ARGV[8] == '1' then redis.call('hset', KEYS[1], 'background', '1') end
  return {'joined', state}
end
local all = tonumber(redis.call('hget', KEYS[3], 'all') or '0')
if all >= tonumber(ARGV[4]) then return {'full', tostring(all)} end
if ARGV[3] ~= '' then
  local mine = tonumber(redis.call('hget', KEYS[3], 'tenant:' .. ARGV[3]) or '0')
  if mine >= tonumber(ARGV[5]) then return {'tenant_full', tostring(mine)} end
  redis.call('hincrby', KEYS[3], 'tenant:' .. ARGV[3], 1)
end
redis.call('hincrby', KEYS[3], 'all', 1)
redis.call('hincrby', KEYS[3], 'class:' .. ARGV[2], 1)
local id = redis.call('xadd', KEYS[2], '*', 'key', ARGV[9], 'spec', ARGV[1])
redis.call('del', KEYS[1])
redis.call('hset', KEYS[1], 'state', 'queued', 'class', ARGV[2], 'tenant', ARGV[3], 'waiters', '1',
  'background', ARGV[8], 'id', id, 'queued_at', ARGV[6], 'counted', '1', 'deliveries', '0')
redis.call('pexpire', KEYS[1], ARGV[7])
return {'queued', id}
"""

# KEYS: job, counters. ARGV: replica, deliveries
_TAKE = (
    _UNCOUNT
    + """
local st = redis.call('hmget', KEYS[1], 'state', 'cancel')
if not st[1] then return 'gone' end
if st[1] == 'done' or st[1] == 'failed' or st[1] == 'cancelled' then return st[1] end
uncount(KEYS[1], KEYS[2])
if st[2] == '1' then
  redis.call('hset', KEYS[1], 'state', 'cancelled', 'reason', 'cancelled before it started')
  return 'cancelled'
end
redis.call('hset', KEYS[1], 'state', 'running', 'replica', ARGV[1], 'phase', 'starting', 'fraction', '0',
  'deliveries', ARGV[2], 'reason', '')
return 'run'
"""
)

# KEYS: job. ARGV: replica, phase, fraction. Returns the cancel flag.
_PROGRESS = """
local st = redis.call('hmget', KEYS[1], 'state', 'replica', 'cancel')
if st[1] == 'running' and st[2] == ARGV[1] then
  redis.call('hset', KEYS[1], 'phase', ARGV[2], 'fraction', ARGV[3])
end
return st[3] or ''
"""

# KEYS: job, stream, counters. ARGV: entry id, state, reason, error kind, replica
_FINISH = (
    _UNCOUNT
    + """
uncount(KEYS[1], KEYS[3])
if redis.call('exists', KEYS[1]) == 1 then
  redis.call('hset', KEYS[1], 'state', ARGV[2], 'reason', ARGV[3], 'error', ARGV[4], 'replica', ARGV[5])
end
redis.call('xack', KEYS[2], 'workers', ARGV[1])
redis.call('xdel', KEYS[2], ARGV[1])
return 1
"""
)

# KEYS: job, counters. ARGV: mode (leave | cancel), reason
_CANCEL = (
    _UNCOUNT
    + """
local st = redis.call('hmget', KEYS[1], 'state', 'waiters', 'background')
if not st[1] then return {'absent', ''} end
local waiters = tonumber(st[2] or '0')
if ARGV[1] == 'leave' then
  waiters = redis.call('hincrby', KEYS[1], 'waiters', -1)
  if waiters > 0 then return {'waited', tostring(waiters)} end
end
if st[1] == 'done' or st[1] == 'failed' or st[1] == 'cancelled' then return {'final', st[1]} end
if st[3] == '1' then return {'background', ''} end
if ARGV[1] == 'cancel' and waiters > 1 then return {'waited', tostring(waiters)} end
redis.call('hset', KEYS[1], 'cancel', '1')
if st[1] == 'queued' then
  uncount(KEYS[1], KEYS[2])
  redis.call('hset', KEYS[1], 'state', 'cancelled', 'reason', ARGV[2])
  return {'cancelled', 'queued'}
end
return {'cancelled', 'running'}
"""
)

# KEYS: the class streams in priority order. ARGV: class index (1-based), entry id, group
_POSITION = """
local pos = 0
local mine = tonumber(ARGV[1])
for i = 1, mine do
  local last = '0-0'
  local ok, groups = pcall(redis.call, 'xinfo', 'groups', KEYS[i])
  if ok then
    for _, g in ipairs(groups) do
      local name, delivered
      for j = 1, #g, 2 do
        if g[j] == 'name' then name = g[j + 1] end
        if g[j] == 'last-delivered-id' then delivered = g[j + 1] end
      end
      if name == ARGV[3] then last = delivered end
    end
  end
  local stop = '+'
  if i == mine then stop = ARGV[2] end
  pos = pos + #redis.call('xrange', KEYS[i], '(' .. last, stop, 'COUNT', 1000)
end
return pos
"""

# KEYS: stream. ARGV: group, consumer, entry id. Resets the entry's idle time while it is ours.
HEARTBEAT = """
local p = redis.call('xpending', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] then return 0 end
redis.call('xclaim', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""

# KEYS: job, stream, dead stream, counters. ARGV: entry id, key, class, deliveries, reason, spec
_DEAD_LETTER = (
    _UNCOUNT
    + """
uncount(KEYS[1], KEYS[4])
redis.call('xadd', KEYS[3], '*', 'key', ARGV[2], 'class', ARGV[3], 'deliveries', ARGV[4], 'reason', ARGV[5],
  'spec', ARGV[6])
if redis.call('exists', KEYS[1]) == 1 then
  redis.call('hset', KEYS[1], 'state', 'failed', 'reason', ARGV[5], 'error', 'dead_letter', 'deliveries', ARGV[4])
end
redis.call('xack', KEYS[2], 'workers', ARGV[1])
redis.call('xdel', KEYS[2], ARGV[1])
return 1
"""
)


async def _create_group(r: Any, stream: str) -> None:
    """The stream and its consumer group, from the stream's first entry (entries added before the
    group existed are delivered too); a group that exists already is left as it is."""
    try:
        await r.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def _grouped(r: Any, stream: str, command: Callable[[], Awaitable[T]]) -> T:
    """`command()` on `stream`'s group, making the group first when Redis has none (NOGROUP).

    A Redis that restarted empty has lost the streams and their group while replicas keep running;
    the first `submit` after it makes the stream again (XADD) but not the group. That is no outage:
    answered here, inside the one call, it neither trips the link's breaker (which would pause every
    other Redis call of this replica) nor leaves the job that XADD queued waiting for a group."""
    try:
        return await command()
    except ResponseError as exc:
        if "NOGROUP" not in str(exc):
            raise
    await _create_group(r, stream)
    return await command()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else ("" if value is None else str(value))


def encode_spec(spec: JobSpec) -> str:
    return json.dumps(asdict(spec), separators=(",", ":"))


def decode_spec(raw: Any) -> JobSpec:
    return JobSpec(**json.loads(_text(raw)))


class FleetQueue:
    """The Redis side of fleet jobs; every method may raise `RedisUnavailable` (the caller falls
    back to this replica's own queue)."""

    def __init__(self, link: RedisLink, *, max_queued: int, max_queued_per_tenant: int, ttl_s: float) -> None:
        self.link = link
        self.max_queued = max_queued
        self.max_queued_per_tenant = max_queued_per_tenant
        self.ttl_ms = max(1, int(ttl_s * 1000))

    # ------------------------------------------------------------------ names

    def stream(self, job_class: str) -> str:
        return self.link.key("jobs", job_class)

    @property
    def dead_stream(self) -> str:
        return self.link.key("jobs", "dead")

    def _job(self, key: str) -> str:
        return self.link.key("job", key)

    @property
    def _counters(self) -> str:
        return self.link.key("jobs", "queued")

    # ------------------------------------------------------------------ setup

    async def ensure_groups(self) -> None:
        """Create each class stream and its consumer group (once per fleet; repeats are harmless)."""

        async def create(r):
            for job_class in CLASSES:
                await _create_group(r, self.stream(job_class))

        await self.link.call("jobs_groups", create)

    # ------------------------------------------------------------------ callers

    async def submit(self, spec: JobSpec) -> str:
        """Queue `spec` or join its job; returns "queued" or "joined". Raises CapacityExceeded."""
        args = [
            encode_spec(spec),
            spec.job_class,
            spec.tenant,
            self.max_queued,
            self.max_queued_per_tenant,
            int(time.time() * 1000),
            self.ttl_ms,
            "1" if spec.background else "0",
            spec.key,
        ]
        keys = [self._job(spec.key), self.stream(spec.job_class), self._counters]
        outcome, detail = await self.link.call("jobs_submit", lambda r: r.eval(_SUBMIT, len(keys), *keys, *args))
        outcome, detail = _text(outcome), _text(detail)
        if outcome == "full":
            raise CapacityExceeded(
                f"attribution queue is full: {detail} graphs waiting across the fleet "
                f"(limit {self.max_queued} waiting); retry later"
            )
        if outcome == "tenant_full":
            raise CapacityExceeded(
                f"attribution queue: this tenant already has {detail} graphs waiting across the fleet "
                f"(limit {self.max_queued_per_tenant} per tenant); retry when one has started"
            )
        return outcome

    async def leave(self, key: str) -> CancelOutcome:
        """A caller stopped waiting; the job stops when it was the last and the job is not background."""
        return await self._cancel(key, "leave", "every caller left")

    async def cancel(self, key: str) -> CancelOutcome:
        return await self._cancel(key, "cancel", "cancelled by CancelJob")

    async def _cancel(self, key: str, mode: str, reason: str) -> CancelOutcome:
        keys = [self._job(key), self._counters]
        outcome, detail = await self.link.call("jobs_cancel", lambda r: r.eval(_CANCEL, 2, *keys, mode, reason))
        outcome, detail = _text(outcome), _text(detail)
        if outcome == "cancelled":
            return CancelOutcome(True)
        why = {
            "absent": "no such job",
            "final": f"the job already ended ({detail})",
            "background": "it is a background job: it finishes for whoever asks later",
            "waited": f"{detail} callers wait for this graph",
        }[outcome]
        return CancelOutcome(False, why)

    async def status(self, key: str) -> JobStatus | None:
        """The job's status (None: no such job, or expired); a queued job's fleet-wide position."""
        raw = await self.link.call("jobs_status", lambda r: r.hgetall(self._job(key)))
        if not raw:
            return None
        h = {_text(k): _text(v) for k, v in raw.items()}
        state = h.get("state", "queued")
        job_class = h.get("class", "interactive")
        position = 0
        if state == "queued" and h.get("id"):
            streams = [self.stream(c) for c in CLASSES]
            index = CLASSES.index(job_class) + 1 if job_class in CLASSES else 1
            found = await self.link.call(
                "jobs_position", lambda r: r.eval(_POSITION, len(streams), *streams, index, h["id"], GROUP)
            )
            position = max(int(found), 1)
        if state == "running" and h.get("cancel") == "1":
            phase = "cancelling"
        else:
            phase = h.get("phase", "")
        return JobStatus(
            key=key,
            state=state,  # type: ignore[arg-type]
            position=position,
            phase=phase,
            fraction=float(h.get("fraction") or 0.0),
            replica=h.get("replica", ""),
            reason=h.get("reason", ""),
            job_class=job_class,
            deliveries=int(h.get("deliveries") or 0),
        )

    async def error_kind(self, key: str) -> str:
        return _text(await self.link.call("jobs_error", lambda r: r.hget(self._job(key), "error")))

    async def depths(self) -> dict[str, int]:
        """Jobs waiting for a worker across the fleet, by class."""
        raw = await self.link.call("jobs_depth", lambda r: r.hgetall(self._counters))
        h = {_text(k): _text(v) for k, v in raw.items()}
        return {c: max(int(h.get(f"class:{c}") or 0), 0) for c in CLASSES}

    # ------------------------------------------------------------------ workers

    async def read(self, job_class: str, consumer: str) -> tuple[str, JobSpec] | None:
        """The next new entry of `job_class` for `consumer` (XREADGROUP, no blocking), or None."""
        stream = self.stream(job_class)
        got = await self.link.call(
            "jobs_read",
            lambda r: _grouped(r, stream, lambda: r.xreadgroup(GROUP, consumer, {stream: ">"}, count=1, block=None)),
        )
        for _name, entries in got or ():
            for entry_id, fields in entries:
                if fields:
                    return _text(entry_id), decode_spec(fields.get(b"spec") or fields.get("spec"))
        return None

    async def reclaim(self, job_class: str, consumer: str, min_idle_ms: int) -> tuple[str, JobSpec | None, int] | None:
        """An entry idle past `min_idle_ms` claimed for `consumer` (XAUTOCLAIM), with the number of
        times it has now been delivered; None when there is none. A spec of None: the entry's data
        is gone (acknowledge it)."""
        stream = self.stream(job_class)
        got = await self.link.call(
            "jobs_reclaim",
            lambda r: _grouped(r, stream, lambda: r.xautoclaim(stream, GROUP, consumer, min_idle_ms, "0-0", count=1)),
        )
        entries = got[1] if got and len(got) > 1 else []
        if not entries:
            return None
        entry_id, fields = entries[0]
        entry_id = _text(entry_id)
        pending = await self.link.call("jobs_pending", lambda r: r.xpending_range(stream, GROUP, entry_id, entry_id, 1))
        deliveries = int(pending[0]["times_delivered"]) if pending else 1
        spec = decode_spec(fields.get(b"spec") or fields.get("spec")) if fields else None
        return entry_id, spec, deliveries

    async def heartbeat(self, job_class: str, consumer: str, entry_id: str) -> bool:
        """Reset the entry's idle time (XCLAIM JUSTID) while it is still `consumer`'s; False when
        another replica has reclaimed it."""
        stream = self.stream(job_class)
        return bool(
            await self.link.call("jobs_heartbeat", lambda r: r.eval(HEARTBEAT, 1, stream, GROUP, consumer, entry_id))
        )

    async def take(self, spec: JobSpec, replica: str, deliveries: int) -> str:
        """ "run" (it is ours now), or the state that means it must not run ("cancelled", "done",
        "failed", "gone")."""
        keys = [self._job(spec.key), self._counters]
        outcome = await self.link.call("jobs_take", lambda r: r.eval(_TAKE, 2, *keys, replica, deliveries))
        return _text(outcome)

    async def progress(self, key: str, replica: str, phase: str, fraction: float) -> bool:
        """Write the progress of a running job; True when a cancel was asked."""
        flag = await self.link.call(
            "jobs_progress", lambda r: r.eval(_PROGRESS, 1, self._job(key), replica, phase, f"{fraction:.4f}")
        )
        return _text(flag) == "1"

    async def finish(
        self, spec: JobSpec, entry_id: str, state: str, *, replica: str, reason: str = "", error: str = ""
    ) -> None:
        keys = [self._job(spec.key), self.stream(spec.job_class), self._counters]
        await self.link.call(
            "jobs_finish", lambda r: r.eval(_FINISH, 3, *keys, entry_id, state, reason, error, replica)
        )

    async def ack(self, job_class: str, entry_id: str) -> None:
        """Acknowledge and delete an entry that must not run (its job ended, or its data is gone)."""
        stream = self.stream(job_class)

        async def ack(r):
            async with r.pipeline(transaction=True) as p:
                await p.xack(stream, GROUP, entry_id).xdel(stream, entry_id).execute()

        await self.link.call("jobs_ack", ack)

    async def requeued(self, key: str, reason: str) -> None:
        """Show a job left unacknowledged by a draining replica as waiting for a reclaim."""
        await self.link.call(
            "jobs_requeued", lambda r: r.hset(self._job(key), mapping={"state": "queued", "reason": reason})
        )

    async def dead_letter(self, entry_id: str, spec: JobSpec, deliveries: int, reason: str) -> None:
        keys = [self._job(spec.key), self.stream(spec.job_class), self.dead_stream, self._counters]
        args = [entry_id, spec.key, spec.job_class, deliveries, reason, encode_spec(spec)]
        await self.link.call("jobs_dead_letter", lambda r: r.eval(_DEAD_LETTER, 4, *keys, *args))
