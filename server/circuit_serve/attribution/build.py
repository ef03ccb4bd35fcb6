"""Assemble the attribution service from its config: Redis link (optional), graph cache,
worker pool, replica locks, served-completions store and metrics."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from circuit_serve.attribution.service import AttributionService
from circuit_serve.attribution.types import GraphEngine
from circuit_serve.cache import GraphCache, MemoryBackend, RedisBackend, RedisLink, entry
from circuit_serve.completions.store import CompletionStore
from circuit_serve.config.attribution import AttributionConfig
from circuit_serve.config.limits import InputLimits
from circuit_serve.jobs import GraphJobs, ReplicaLocks, WorkerPool
from circuit_serve.jobs.fleet_queue import FleetQueue
from circuit_serve.jobs.fleet_worker import FleetWorkers
from circuit_serve.metrics.attribution import AttributionMetrics


def build_service(
    config: AttributionConfig,
    registry: CollectorRegistry,
    engine: GraphEngine | None,
    limits: InputLimits | None = None,
    *,
    graph_format: int | None = None,
    engine_factory: Callable[[], GraphEngine | None] | None = None,
) -> AttributionService:
    """The service; `engine` is None when the server runs without transcoders, or when
    `engine_factory` builds it in the service's `start()` (once the replacement model is loaded).
    `graph_format` is written in and checked on every cache entry (default: the engine's).

    Must be called inside the server's event loop (the Redis client binds to it).
    """
    metrics = AttributionMetrics(registry)
    link = (
        RedisLink(config.redis_url, prefix=config.redis_prefix, timeout_s=config.redis_timeout_s)
        if config.redis_url
        else None
    )
    backend = RedisBackend(link) if link is not None else MemoryBackend(config.memory_cache_bytes)
    cache = GraphCache(
        backend,
        graph_format=graph_format if graph_format is not None else engine.graph_format if engine is not None else 0,
        ttl_s=config.cache_ttl_s,
        max_entry_bytes=config.cache_max_entry_bytes,
        metrics=metrics,
        codec=entry.Codec.ZLIB if config.cache_compression == "zlib" else entry.Codec.STORED,
    )
    replica = config.replica_name or f"{socket.gethostname()}-{os.getpid()}"
    metrics.replica_info.labels(replica, config.role).set(1)
    pool = WorkerPool(
        workers=config.workers,
        max_queued=config.max_queued,
        max_queued_per_tenant=config.max_queued_per_tenant,
        metrics=metrics,
    )
    fleet = (
        FleetQueue(
            link,
            max_queued=config.max_queued,
            max_queued_per_tenant=config.max_queued_per_tenant,
            ttl_s=config.job_ttl_s,
        )
        if link is not None
        else None
    )
    jobs = GraphJobs(
        cache=cache,
        pool=pool,
        locks=ReplicaLocks(link, ttl_s=config.lock_ttl_s),
        metrics=metrics,
        lock_wait_s=config.lock_wait_s,
        fleet=fleet,
        replica=replica,
        poll_s=config.job_poll_s,
    )
    workers = (
        FleetWorkers(
            queue=fleet,
            pool=pool,
            cache=cache,
            metrics=metrics,
            replica=replica,
            workers=0 if config.role == "generation" else config.workers,
            poll_s=config.job_poll_s,
            heartbeat_s=config.job_heartbeat_s,
            reclaim_s=config.job_reclaim_s,
            max_deliveries=config.job_max_deliveries,
        )
        if fleet is not None
        else None
    )
    completions = CompletionStore(
        ttl_s=config.completions_ttl_s,
        max_entries=config.completions_max,
        max_bytes=config.completions_max_bytes,
        metrics=metrics,
        link=link,
    )
    return AttributionService(
        engine=engine,
        jobs=jobs,
        completions=completions,
        config=config,
        metrics=metrics,
        redis=link,
        limits=limits,
        engine_factory=engine_factory,
        workers=workers,
    )
