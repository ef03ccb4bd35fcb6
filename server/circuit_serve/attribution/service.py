"""The attribution service: from a request to a cached, deduplicated, admitted graph.

Attribute, step by step:
1. refuse when the server has no transcoders (NotConfigured);
2. resolve the input to token ids: tokenize a prompt, take ids as given, or
   look a served completion up by request id and take everything before
   completion token `token_index`;
3. check the limits (prompt tokens, max_feature_nodes, batch size) ->
   InvalidRequest naming the limit and the value. The memory budget is checked
   by the engine itself once the forward pass has counted the active features
   (an estimate before that can only assume a worst case and would refuse
   ordinary requests); it refuses with InvalidRequest giving the estimate and
   the budget, before allocating the edge matrix;
4. compute the content address of the graph and announce it (`Accepted`);
5. stream the job: cached graph, or queue position and progress of the
   (possibly shared) computation, then the finished sections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import replace

from circuit_serve.attribution.types import Accepted, AttributeRequest, AttributionInput, GraphEngine
from circuit_serve.cache.key import graph_key, is_graph_key
from circuit_serve.cache.redis_link import RedisLink
from circuit_serve.completions.store import CompletionStore
from circuit_serve.config.attribution import AttributionConfig
from circuit_serve.errors import (
    BackendUnavailable,
    CapacityExceeded,
    Cancelled,
    CircuitError,
    DeadlineExceeded,
    InvalidRequest,
    NotConfigured,
    NotFound,
)
from circuit_serve.jobs.events import Finished, JobEvent
from circuit_serve.jobs.runner import GraphJobs
from circuit_serve.metrics.attribution import AttributionMetrics
from circuit_serve.tracing.settings import AttributionSettings
from circuit_serve.tracing.targets import Contrast

log = logging.getLogger(__name__)

NO_TRANSCODERS = (
    "attribution is not enabled on this server: it was started without transcoders; "
    "restart `circuit-serve serve` with --transcoders DIR"
)


class AttributionService:
    def __init__(
        self,
        *,
        engine: GraphEngine | None,
        jobs: GraphJobs,
        completions: CompletionStore,
        config: AttributionConfig,
        metrics: AttributionMetrics,
        redis: RedisLink | None = None,
    ) -> None:
        self.engine = engine
        self.redis = redis
        self.jobs = jobs
        self.completions = completions
        self.config = config
        self.metrics = metrics
        self._background: set[asyncio.Task] = set()

    # ------------------------------------------------------------------ Attribute

    async def attribute(
        self, request: AttributeRequest, *, timeout_s: float | None = None
    ) -> AsyncIterator[Accepted | JobEvent | Finished]:
        """`Accepted`, then queue/progress events, then `Finished`. Raises domain errors."""
        outcome = "error"
        try:
            engine = self._engine()
            tokens, audited = await self._resolve(engine, request.input)
            settings = self._check_limits(engine, tokens, request.settings)
            key = self.key_for(engine, tokens, settings, request.targets)

            def work(progress, should_stop):
                return engine.compute(tokens, settings, request.targets, progress, should_stop, slug=key)

            if request.background:
                self._pin(key, work)
            yield Accepted(key, tuple(tokens), audited)
            async with contextlib.aclosing(self.jobs.stream(key, work, timeout_s=timeout_s)) as events:
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

    async def _resolve(self, engine: GraphEngine, given: AttributionInput) -> tuple[list[int], int | None]:
        named = [n for n, v in (("prompt", given.prompt), ("prompt_token_ids", given.token_ids),
                                ("request_id", given.request_id), ("messages", given.messages)) if v]
        if len(named) != 1:
            raise InvalidRequest(
                "give exactly one of prompt, prompt_token_ids, messages, or request_id with token_index"
                + (f" (got {', '.join(named)})" if named else " (got none)"),
                field="input",
            )
        if given.token_index is not None and not given.request_id:
            raise InvalidRequest("token_index needs request_id (it indexes a served completion)", field="token_index")
        if given.prompt:
            return engine.prepare(engine.tokenize(given.prompt)), None
        if given.messages:
            return engine.prepare(engine.chat_tokens(given.messages)), None
        if given.token_ids:
            bad = [t for t in given.token_ids if not 0 <= t < engine.vocab_size]
            if bad:
                raise InvalidRequest(
                    f"token ids {bad[:5]} are outside the vocabulary [0, {engine.vocab_size})", field="prompt_token_ids"
                )
            return engine.prepare(given.token_ids), None
        if given.token_index is None:
            raise InvalidRequest("request_id needs token_index (which completion token to explain)", field="token_index")
        served = await self.completions.get(given.request_id)
        context = served.context_for(given.token_index)
        return engine.prepare(context), served.completion_token_ids[given.token_index]

    def _check_limits(self, engine: GraphEngine, tokens: list[int], settings: AttributionSettings) -> AttributionSettings:
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

    def _pin(self, key: str, work) -> None:
        """Keep a waiter on `key` inside the server so the graph is finished and cached regardless of callers."""

        async def hold() -> None:
            try:
                async with contextlib.aclosing(self.jobs.stream(key, work)) as events:
                    async for _ in events:
                        pass
            except CircuitError as exc:
                log.info("background graph %s not finished: %s", key, exc)

        task = asyncio.create_task(hold(), name=f"background-{key[:12]}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ GetGraph

    async def get_graph(self, key: str) -> dict[str, bytes]:
        """The cached sections of `key`; NotFound when absent or expired."""
        self._engine()
        if not is_graph_key(key):
            raise InvalidRequest(f"{key!r} is not a graph key (64 lowercase hex digits)", field="key")
        sections = await self.jobs.cache.get(key)
        if sections is None:
            if key in self.jobs.inflight:
                raise NotFound(f"graph {key} is still being computed; retry later")
            raise NotFound(f"graph {key} is not in the cache (never computed here, or expired)")
        return sections

    # ------------------------------------------------------------------ served completions

    def on_completion(self, request_id: str, prompt_token_ids, completion_token_ids) -> None:
        """Finish listener of the generation engine (runs on the event loop); never raises."""
        try:
            self.completions.record_nowait(request_id, prompt_token_ids, completion_token_ids)
        except Exception:  # auditing must never break serving
            log.exception("could not record served completion %s", request_id)

    def shutdown(self) -> None:
        """Synchronous part of `close` (for a runtime that shuts down outside the loop)."""
        for task in list(self._background):
            task.cancel()
        self.jobs.pool.shutdown()

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self.jobs.pool.shutdown()
        if self.redis is not None:
            await self.redis.close()


def _target_key(target) -> list[int] | int:
    if isinstance(target, Contrast):
        return [target.token, target.versus]
    if isinstance(target, tuple):
        return [int(target[0]), int(target[1])]
    return int(target)
