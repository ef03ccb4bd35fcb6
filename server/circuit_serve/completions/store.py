"""Token ids of recently served generations, kept for auditing by `request_id`.

The generation path records (tenant, prompt ids, completion ids) for each finished
request when the server can attribute (it has transcoders). An auditor later names
the request and a completion token index; the attribution service checks that the
auditor is that tenant (or an admin) and then explains that token given everything
before it.

Records live in a bounded in-process LRU (at most `max_entries` records and
`max_bytes` of token ids, packed 4 bytes a token) with a TTL and, when Redis is
configured, also in Redis under `<prefix>completion:<request_id>` with the same
TTL, so any replica can audit any replica's responses. Recording never fails a
generation: a Redis error is counted and the in-memory copy remains. A record
larger than `max_bytes` on its own is not kept. A steered completion's record also
holds the interventions that were active (its graph is not computed: `check_auditable`).
The Redis value is JSON (`{"v": 2, "tenant": "...", "prompt": [...], "completion": [...]}`,
plus `"interventions": [{"layer", "index", "op", "value", "positions", "generated",
"all_prompt"}, ...]` when steered).
"""

from __future__ import annotations

import asyncio
import json
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from circuit_serve.cache.redis_link import RedisLink, RedisUnavailable
from circuit_serve.domain.errors import InvalidRequest, NotFound, NotSupported
from circuit_serve.domain.features import FeatureRef, Intervention, Op
from circuit_serve.metrics.attribution import AttributionMetrics

_FORMAT = 2
_RECORD_OVERHEAD = 256  # bytes charged per record beyond its token ids (objects, dict slot, id)


def not_found(request_id: str, ttl_s: float) -> NotFound:
    """The one answer for a completion that is unknown, expired, or another tenant's."""
    return NotFound(
        f"request_id {request_id!r} is not a generation this server remembers "
        f"(unknown, or older than the {ttl_s:.0f}s retention)"
    )


@dataclass(frozen=True, slots=True)
class ServedCompletion:
    request_id: str
    prompt_token_ids: tuple[int, ...]
    completion_token_ids: tuple[int, ...]
    tenant: str = ""  # who generated it ("" on a server without tokens)
    interventions: tuple[Intervention, ...] = ()  # active while it was generated (steered)

    def check_auditable(self) -> None:
        """NotSupported for a steered completion: its graph would be the unsteered model's."""
        if self.interventions:
            n = len(self.interventions)
            features = ", ".join(f"{iv.op.value} {iv.feature}" for iv in self.interventions)
            raise NotSupported(
                f"request_id {self.request_id!r} was a steered completion ({n} intervention"
                f"{'s' if n > 1 else ''}: {features}); graphs of steered runs are not computed (the "
                "replacement model's graph would explain the unsteered model). Attribute its tokens as "
                "a prompt (prompt_token_ids) to see the unsteered model's circuit for them"
            )

    def context_for(self, token_index: int) -> list[int]:
        """The token ids the model saw before emitting completion token `token_index`."""
        n = len(self.completion_token_ids)
        if not 0 <= token_index < n:
            raise InvalidRequest(
                f"must be in [0, {n - 1}] for request {self.request_id!r}, whose completion has {n} tokens; got {token_index}"
                if n
                else f"request {self.request_id!r} has an empty completion; there is no token to attribute",
                field="token_index",
            )
        return [*self.prompt_token_ids, *self.completion_token_ids[:token_index]]

    def to_json(self) -> bytes:
        doc = {
            "v": _FORMAT,
            "tenant": self.tenant,
            "prompt": list(self.prompt_token_ids),
            "completion": list(self.completion_token_ids),
        }
        if self.interventions:
            doc["interventions"] = [_intervention_json(iv) for iv in self.interventions]
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, request_id: str, raw: bytes) -> ServedCompletion | None:
        try:
            doc = json.loads(raw)
            if doc.get("v") != _FORMAT or not isinstance(doc.get("tenant"), str):
                return None  # older records carry no owner: treat them as gone
            return cls(
                request_id,
                tuple(int(t) for t in doc["prompt"]),
                tuple(int(t) for t in doc["completion"]),
                doc["tenant"],
                tuple(_intervention_from_json(d) for d in doc.get("interventions", ())),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


def _intervention_json(iv: Intervention) -> dict:
    return {
        "layer": iv.feature.layer,
        "index": iv.feature.index,
        "op": iv.op.value,
        "value": iv.value,
        "positions": list(iv.positions),
        "generated": iv.generated,
        "all_prompt": iv.all_prompt,
    }


def _intervention_from_json(d: dict) -> Intervention:
    return Intervention(
        FeatureRef(int(d["layer"]), int(d["index"])),
        Op(d["op"]),
        float(d["value"]),
        tuple(int(p) for p in d["positions"]),
        bool(d["generated"]),
        bool(d["all_prompt"]),
    )


@dataclass(frozen=True, slots=True)
class _Packed:
    """A record as kept in memory: token ids packed 4 bytes each."""

    tenant: str
    prompt: array
    completion: array
    expires_at: float
    interventions: tuple[Intervention, ...] = ()

    @property
    def nbytes(self) -> int:
        return _RECORD_OVERHEAD + self.prompt.itemsize * (len(self.prompt) + len(self.completion)) + len(self.tenant)

    def unpack(self, request_id: str) -> ServedCompletion:
        return ServedCompletion(request_id, tuple(self.prompt), tuple(self.completion), self.tenant, self.interventions)


class CompletionStore:
    def __init__(
        self,
        *,
        ttl_s: float,
        max_entries: int,
        metrics: AttributionMetrics,
        max_bytes: int = 256 << 20,
        link: RedisLink | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.link = link
        self._clock = clock
        self._local: OrderedDict[str, _Packed] = OrderedDict()
        self._bytes = 0
        self._pending: set[asyncio.Task] = set()

    def __len__(self) -> int:
        return len(self._local)

    @property
    def nbytes(self) -> int:
        """Bytes charged for the records kept in memory now (at most `max_bytes`)."""
        return self._bytes

    async def record(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        completion_token_ids: Sequence[int],
        *,
        tenant: str = "",
        interventions: Sequence[Intervention] = (),
    ) -> None:
        """Remember a served generation; never raises for a Redis problem."""
        item = self._keep(request_id, prompt_token_ids, completion_token_ids, tenant, interventions)
        await self._put_redis(item)

    def record_nowait(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        completion_token_ids: Sequence[int],
        *,
        tenant: str = "",
        interventions: Sequence[Intervention] = (),
    ) -> None:
        """`record` for synchronous callers on the event loop: the local copy is there at once,
        the Redis copy follows in a task."""
        item = self._keep(request_id, prompt_token_ids, completion_token_ids, tenant, interventions)
        if self.link is not None:
            task = asyncio.get_running_loop().create_task(self._put_redis(item))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    def _keep(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        completion_token_ids: Sequence[int],
        tenant: str,
        interventions: Sequence[Intervention],
    ) -> ServedCompletion:
        item = ServedCompletion(
            request_id,
            tuple(int(t) for t in prompt_token_ids),
            tuple(int(t) for t in completion_token_ids),
            tenant,
            tuple(interventions),
        )
        self._drop(request_id)
        packed = _Packed(
            tenant,
            array("i", item.prompt_token_ids),
            array("i", item.completion_token_ids),
            self._clock() + self.ttl_s,
            item.interventions,
        )
        if packed.nbytes > self.max_bytes:
            return item  # larger than the whole budget: Redis (when configured) may still keep it
        self._local[request_id] = packed
        self._bytes += packed.nbytes
        while len(self._local) > self.max_entries or self._bytes > self.max_bytes:
            _, oldest = self._local.popitem(last=False)
            self._bytes -= oldest.nbytes
        return item

    def _drop(self, request_id: str) -> None:
        old = self._local.pop(request_id, None)
        if old is not None:
            self._bytes -= old.nbytes

    async def _put_redis(self, item: ServedCompletion) -> None:
        if self.link is None:
            return
        name = self.link.key("completion", item.request_id)
        px = max(1, int(self.ttl_s * 1000))
        try:
            await self.link.call("completion_put", lambda r: r.set(name, item.to_json(), px=px))
        except RedisUnavailable:
            self.metrics.completion_store_errors.labels("put").inc()

    async def get(self, request_id: str) -> ServedCompletion:
        """The record of `request_id`; `NotFound` when unknown or expired."""
        local = self._local.get(request_id)
        if local is not None:
            if self._clock() < local.expires_at:
                return local.unpack(request_id)
            self._drop(request_id)
        if self.link is not None:
            name = self.link.key("completion", request_id)
            try:
                raw = await self.link.call("completion_get", lambda r: r.get(name))
            except RedisUnavailable:
                self.metrics.completion_store_errors.labels("get").inc()
                raw = None
            if raw is not None:
                found = ServedCompletion.from_json(request_id, raw)
                if found is not None:
                    return found
        raise not_found(request_id, self.ttl_s)
