"""The attribution service: from a request to a cached, deduplicated, admitted graph.

Attribute, step by step:
1. refuse when the server has no transcoders (NotConfigured);
2. resolve the input to token ids: tokenize a prompt, take ids as given, or
   look a served completion up by request id and take everything before
   completion token `token_index` (only the tenant that generated it, or an
   admin, may: anyone else hears NotFound, as for an unknown id; an admin's
   audit of another tenant's completion is logged, and the graph is recorded
   as owned by that tenant, so GetGraph by key follows the same rule);
3. check the limits (prompt tokens, max_feature_nodes, batch size) ->
   InvalidRequest naming the limit and the value. The memory budget is checked
   by the engine itself once the forward pass has counted the active features
   (an estimate before that can only assume a worst case and would refuse
   ordinary requests); it refuses with InvalidRequest giving the estimate and
   the budget, before allocating the edge matrix;
4. compute the content address of the graph and announce it (`Accepted`);
5. stream the job: cached graph, or queue position and progress of the
   (possibly shared) computation, then the finished sections. With Redis the job
   is queued for the fleet with everything a worker on any replica needs (`JobSpec`:
   token ids, settings, targets; `work_for` turns it back into engine work).

GetJob / WatchJob / CancelJob name a job by its graph key and check its owners as
GetGraph does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

from circuit_serve.attribution.owners import GraphOwners
from circuit_serve.attribution.types import Accepted, AttributeRequest, AttributionInput, GraphEngine
from circuit_serve.auth.principal import ANONYMOUS, Principal
from circuit_serve.cache.key import graph_key, is_graph_key
from circuit_serve.cache.redis_link import RedisLink
from circuit_serve.completions.store import CompletionStore, not_found
from circuit_serve.config.attribution import AttributionConfig
from circuit_serve.config.limits import InputLimits
from circuit_serve.domain.errors import (
    BackendUnavailable,
    Cancelled,
    CapacityExceeded,
    CircuitError,
    DeadlineExceeded,
    InvalidRequest,
    NotConfigured,
    NotFound,
)
from circuit_serve.domain.input_checks import check_count, check_text_bytes
from circuit_serve.jobs.events import Finished, JobEvent, Work
from circuit_serve.jobs.fleet_worker import FleetWorkers
from circuit_serve.jobs.runner import GraphJobs
from circuit_serve.jobs.status import CLASSES, CancelOutcome, JobSpec, JobStatus
from circuit_serve.metrics.attribution import AttributionMetrics
from circuit_serve.tracing.settings import AttributionSettings
from circuit_serve.tracing.targets import Contrast

log = logging.getLogger(__name__)

NO_TRANSCODERS = (
    "attribution is not enabled on this server: it was started without transcoders; "
    "restart `circuit-serve serve` with --transcoders DIR"
)


class AttributionService:
    """Built with its parts; `start()` builds the engine with `engine_factory` (the server's
    replacement model is loaded by then), `close()` / `shutdown()` stop it."""

    def __init__(
        self,
        *,
        engine: GraphEngine | None,
        jobs: GraphJobs,
        completions: CompletionStore,
        config: AttributionConfig,
        metrics: AttributionMetrics,
        redis: RedisLink | None = None,
        owners: GraphOwners | None = None,
        limits: InputLimits | None = None,
        engine_factory: Callable[[], GraphEngine | None] | None = None,
        workers: FleetWorkers | None = None,
    ) -> None:
        """`engine`: None when the server runs without transcoders, or until `start()` has built it
        with `engine_factory` (called once, on the event loop). `workers`: this replica's workers
        on the fleet queue (with Redis), started once the engine is there."""
        self.engine = engine
        self._engine_factory = engine_factory
        self.limits = limits or InputLimits()
        self.redis = redis
        self.jobs = jobs
        self.completions = completions
        self.config = config
        self.metrics = metrics
        self.owners = owners or GraphOwners(
            ttl_s=config.cache_ttl_s, max_entries=config.completions_max, metrics=metrics, link=redis
        )
        self._background: set[asyncio.Task] = set()
        self._pinned: set[str] = set()
        self.workers = workers

    async def start(self) -> None:
        if self._engine_factory is not None:
            self.engine = self._engine_factory()
        if self.workers is not None and self.engine is not None:
            await self.workers.start(self.work_for)

    def work_for(self, spec: JobSpec) -> Work:
        """The engine work of a fleet job (its payload as `attribute` wrote it)."""
        engine = self._engine()
        p = spec.payload
        settings = AttributionSettings(**p["settings"])
        targets = None if p["targets"] is None else tuple(_target_from(t) for t in p["targets"])
        tokens = [int(t) for t in p["tokens"]]
        exit_at = self.config.test_exit_batch_size
        if exit_at and settings.batch_size == exit_at:  # --test-exit-on-batch-size: a worker crash, for tests
            log.error("--test-exit-on-batch-size %d: exiting while taking graph job %s", exit_at, spec.key)
            os._exit(86)

        def work(progress, should_stop):
            return engine.compute(tokens, settings, targets, progress, should_stop, slug=spec.key)

        return work

    # ------------------------------------------------------------------ Attribute

    async def attribute(
        self, request: AttributeRequest, *, timeout_s: float | None = None, caller: Principal = ANONYMOUS
    ) -> AsyncIterator[Accepted | JobEvent | Finished]:
        """`Accepted`, then queue/progress events, then `Finished`. Raises domain errors."""
        outcome = "error"
        try:
            engine = self._engine()
            self._check_sizes(engine, request)
            tokens, audited, owner = await self._resolve(engine, request.input, caller)
            settings = self._check_limits(engine, tokens, request.settings)
            key = self.key_for(engine, tokens, settings, request.targets)
            if owner:  # a named tenant's completion: its graph is that tenant's too
                await self.owners.add(key, owner)

            def work(progress, should_stop):
                return engine.compute(tokens, settings, request.targets, progress, should_stop, slug=key)

            job_class = request.job_class or ("background" if request.background else "interactive")
            if job_class not in CLASSES:
                raise InvalidRequest(f"unknown job class {job_class!r}", field="job_class")
            spec = JobSpec(
                key,
                {
                    "tokens": list(tokens),
                    "settings": settings.as_dict(),
                    "targets": None if request.targets is None else [_target_key(t) for t in request.targets],
                },
                tenant=caller.name,
                job_class=job_class,
                background=request.background,
            )
            if request.background:  # submitted (to the fleet too) even if the caller hangs up at once
                self._pin(key, work, caller.name, spec)
            yield Accepted(key, tuple(tokens), audited)
            stream = self.jobs.stream(key, work, timeout_s=timeout_s, tenant=caller.name, spec=spec)
            async with contextlib.aclosing(stream) as events:
                async for event in events:
                    if isinstance(event, Finished):
                        outcome = "cached" if event.source == "cache" else "ok"
                    yield event
        except InvalidRequest:
            outcome = "invalid"
            raise
        except NotFound:
            outcome = "not_found"
            raise
        except CapacityExceeded:
            outcome = "capacity"
            raise
        except DeadlineExceeded:
            outcome = "deadline"
            raise
        except (NotConfigured, BackendUnavailable):
            outcome = "unavailable"
            raise
        except (Cancelled, asyncio.CancelledError, GeneratorExit):
            outcome = "cancelled"
            raise
        finally:
            self.metrics.requests.labels(outcome).inc()

    def key_for(self, engine: GraphEngine, tokens: list[int], settings: AttributionSettings, targets) -> str:
        material = settings.as_dict()
        material["targets"] = None if targets is None else [_target_key(t) for t in targets]
        labels_id = getattr(engine, "labels_id", "")
        if labels_id:  # feature labels are written into the JSON
            material["labels"] = labels_id
        return graph_key(
            model_id=engine.model_id,
            transcoder_id=engine.transcoder_id,
            token_ids=tokens,
            settings=material,
            graph_format=engine.graph_format,
        )

    def _engine(self) -> GraphEngine:
        if self.engine is None:
            if self.config.transcoders is not None:
                raise BackendUnavailable("the attribution engine is still loading; retry shortly")
            raise NotConfigured(NO_TRANSCODERS)
        return self.engine

    async def _resolve(
        self, engine: GraphEngine, given: AttributionInput, caller: Principal
    ) -> tuple[list[int], int | None, str]:
        """(token ids, the audited token or None, the owning tenant of an audited completion)."""
        named = [
            n
            for n, v in (
                ("prompt", given.prompt),
                ("prompt_token_ids", given.token_ids),
                ("request_id", given.request_id),
                ("messages", given.messages),
            )
            if v
        ]
        if len(named) != 1:
            raise InvalidRequest(
                "give exactly one of prompt, prompt_token_ids, messages, or request_id with token_index"
                + (f" (got {', '.join(named)})" if named else " (got none)"),
                field="input",
            )
        if given.token_index is not None and not given.request_id:
            raise InvalidRequest("token_index needs request_id (it indexes a served completion)", field="token_index")
        if given.prompt:  # tokenized off the event loop (its size was checked first)
            return await asyncio.to_thread(lambda: engine.prepare(engine.tokenize(given.prompt))), None, ""
        if given.messages:
            return await asyncio.to_thread(lambda: engine.prepare(engine.chat_tokens(given.messages))), None, ""
        if given.token_ids:
            bad = [t for t in given.token_ids if not 0 <= t < engine.vocab_size]
            if bad:
                raise InvalidRequest(
                    f"token ids {bad[:5]} are outside the vocabulary [0, {engine.vocab_size})", field="prompt_token_ids"
                )
            return engine.prepare(given.token_ids), None, ""
        if given.token_index is None:
            raise InvalidRequest(
                "request_id needs token_index (which completion token to explain)", field="token_index"
            )
        served = await self.completions.get(given.request_id)
        if not caller.may_read(served.tenant):
            raise not_found(given.request_id, self.completions.ttl_s)  # do not reveal that it exists
        if served.tenant != caller.name:
            log.warning(
                "cross-tenant audit: admin %r audits request %s of tenant %r (completion token %d)",
                caller.name,
                given.request_id,
                served.tenant,
                given.token_index,
            )
        served.check_auditable()  # a steered completion: refused, saying which interventions were active
        context = served.context_for(given.token_index)
        return engine.prepare(context), served.completion_token_ids[given.token_index], served.tenant

    def _check_sizes(self, engine: GraphEngine, request: AttributeRequest) -> None:
        """Sizes of the request's fields, before anything is tokenized, scanned or looked up."""
        given, limits = request.input, self.limits
        check_text_bytes(given.prompt, limits.max_prompt_bytes, field="prompt")
        check_count(
            given.token_ids,
            min(self.config.max_prompt_tokens, engine.max_positions),
            field="prompt_token_ids",
            what="token ids",
        )
        if (
            given.request_id
            and len(given.request_id.encode("utf-8", errors="surrogatepass")) > limits.max_request_id_bytes
        ):
            raise InvalidRequest(
                f"is longer than {limits.max_request_id_bytes} bytes; no served completion has such an id",
                field="request_id",
            )
        check_count(request.targets, limits.max_targets, field="settings.targets", what="targets")
        if request.settings.max_n_logits > limits.max_targets:
            raise InvalidRequest(
                f"{request.settings.max_n_logits} is above this server's limit of {limits.max_targets} logit targets",
                field="max_n_logits",
            )

    def _check_limits(
        self, engine: GraphEngine, tokens: list[int], settings: AttributionSettings
    ) -> AttributionSettings:
        cfg = self.config
        settings.validate()
        limit = min(cfg.max_prompt_tokens, engine.max_positions)
        if len(tokens) > limit:
            raise InvalidRequest(
                f"the input has {len(tokens)} tokens (BOS included); the attribution limit is {limit}; shorten it",
                field="prompt",
            )
        if settings.max_feature_nodes is None:
            settings = replace(settings, max_feature_nodes=cfg.max_feature_nodes_limit)
        elif settings.max_feature_nodes > cfg.max_feature_nodes_limit:
            raise InvalidRequest(
                f"{settings.max_feature_nodes} is above this server's limit of {cfg.max_feature_nodes_limit}",
                field="max_feature_nodes",
            )
        if settings.batch_size > cfg.max_batch_size:
            raise InvalidRequest(
                f"{settings.batch_size} is above this server's limit of {cfg.max_batch_size}", field="batch_size"
            )
        return settings

    def _pin(self, key: str, work, tenant: str, spec: JobSpec | None = None) -> None:
        """Keep a waiter on `key` inside the server so the graph is finished and cached regardless of callers."""

        async def hold() -> None:
            try:
                async with contextlib.aclosing(self.jobs.stream(key, work, tenant=tenant, spec=spec)) as events:
                    async for _ in events:
                        pass
            except CircuitError as exc:
                log.info("background graph %s not finished: %s", key, exc)

        task = asyncio.create_task(hold(), name=f"background-{key[:12]}")
        self._background.add(task)
        self._pinned.add(key)
        task.add_done_callback(lambda t: (self._background.discard(t), self._pinned.discard(key)))

    # ------------------------------------------------------------------ GetGraph

    async def get_graph(self, key: str, *, caller: Principal = ANONYMOUS) -> dict[str, bytes]:
        """The cached sections of `key`; NotFound when absent or expired, or when the graph is
        an audit of another tenant's completion (and the caller is not an admin)."""
        self._engine()
        if not is_graph_key(key):
            raise InvalidRequest(f"{key!r} is not a graph key (64 lowercase hex digits)", field="key")
        absent = NotFound(f"graph {key} is not in the cache (never computed here, or expired)")
        sections = await self.jobs.cache.get(key)
        if sections is None and key not in self.jobs.inflight:
            raise absent
        owners = await self.owners.owners(key)
        if owners and not caller.is_admin and caller.name not in owners:
            raise absent  # the same answer as for a graph that does not exist
        if owners and caller.name not in owners:
            log.warning("cross-tenant audit: admin %r fetches graph %s owned by %s", caller.name, key, sorted(owners))
        if sections is None:
            raise NotFound(f"graph {key} is still being computed; retry later")
        return sections

    # ------------------------------------------------------------------ jobs

    async def _check_reader(self, key: str, caller: Principal) -> None:
        """GetGraph's rule for a job: a valid key whose owners (if any) include the caller or an admin."""
        self._engine()
        if not is_graph_key(key):
            raise InvalidRequest(f"{key!r} is not a graph key (64 lowercase hex digits)", field="key")
        owners = await self.owners.owners(key)
        if owners and not caller.is_admin and caller.name not in owners:
            raise NotFound(f"no graph job {key} (never submitted, or expired)")

    async def get_job(self, key: str, *, caller: Principal = ANONYMOUS) -> JobStatus:
        await self._check_reader(key, caller)
        found = await self.jobs.status(key)
        if found is None:
            raise NotFound(f"no graph job {key} (never submitted, or expired)")
        return found

    async def watch_job(self, key: str, *, caller: Principal = ANONYMOUS) -> AsyncIterator[JobStatus]:
        """The status now, then each change, until a final state (polled every `--job-poll`)."""
        last = await self.get_job(key, caller=caller)
        yield last
        while not last.final:
            await asyncio.sleep(self.config.job_poll_s)
            now = await self.jobs.status(key)
            if now is None:
                return
            if now != last:
                yield now
            last = now

    async def cancel_job(self, key: str, *, caller: Principal = ANONYMOUS) -> CancelOutcome:
        await self._check_reader(key, caller)
        outcome = await self.jobs.cancel(key, pinned=key in self._pinned)
        return replace(outcome, status=await self.jobs.status(key))

    async def drain(self, grace_s: float) -> None:
        """SIGTERM: take no more fleet jobs; running ones get `grace_s`, then are left for others."""
        if self.workers is not None:
            await self.workers.drain(grace_s)

    # ------------------------------------------------------------------ served completions

    def on_completion(
        self, request_id: str, prompt_token_ids, completion_token_ids, *, tenant: str = "", interventions=()
    ) -> None:
        """Finish listener of the generation engine (runs on the event loop); never raises.
        `interventions`: those active in a steered completion (kept; auditing it is refused)."""
        try:
            self.completions.record_nowait(
                request_id, prompt_token_ids, completion_token_ids, tenant=tenant, interventions=interventions
            )
        except Exception:  # auditing must never break serving
            log.exception("could not record served completion %s", request_id)

    def shutdown(self) -> None:
        """Synchronous part of `close` (for a runtime that shuts down outside the loop)."""
        for task in list(self._background):
            task.cancel()
        if self.workers is not None:
            self.workers.shutdown()
        self.jobs.pool.shutdown()

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        if self.workers is not None:
            self.workers.shutdown()
        await asyncio.gather(*self._background, return_exceptions=True)
        self.jobs.pool.shutdown()
        if self.redis is not None:
            await self.redis.close()


def _target_from(value) -> int | Contrast:
    """`_target_key`'s inverse (a fleet job's payload)."""
    return Contrast(int(value[0]), int(value[1])) if isinstance(value, list) else int(value)


def _target_key(target) -> list[int] | int:
    if isinstance(target, Contrast):
        return [target.token, target.versus]
    if isinstance(target, tuple):
        return [int(target[0]), int(target[1])]
    return int(target)
