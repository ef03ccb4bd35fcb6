"""FeaturesService: the async face of the features engine for the RPC layer and generation.

- `feature_activations` runs off the event loop;
- `steer` is admitted by the attribution service's worker pool (same queue, same limits);
- `monitor_stream` wraps a generation stream of a monitored request (see `streaming`);
  requests that are not monitored never reach this module.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from circuit_serve.config.features import FeaturesConfig
from circuit_serve.errors import NotConfigured
from circuit_serve.features.engine import FeaturesEngine, PositionActivations, SteerQuery, TokensInput
from circuit_serve.features.files import FeatureFileError
from circuit_serve.features.labels import Labels, load_labels
from circuit_serve.features.monitor import Monitor
from circuit_serve.features.steering import SteerResult
from circuit_serve.features.streaming import MonitoredChunk, monitor_stream
from circuit_serve.features.types import FeatureRef, TranscoderShape
from circuit_serve.features.watchlist import load_watchlist
from circuit_serve.generation.types import GenerationChunk
from circuit_serve.metrics.features import FeatureMetrics
from circuit_serve.tracing.replacement import ReplacementModel

NO_TRANSCODERS = ("features are not enabled on this server: it was started without transcoders; "
                  "restart `circuit-serve serve` with --transcoders DIR")
NO_WATCHLIST = ("monitoring is not enabled on this server: it was started without a watchlist; "
                "restart `circuit-serve serve` with --watchlist FILE")


class FeaturesService:
    def __init__(self, *, engine: FeaturesEngine | None, monitor: Monitor | None, config: FeaturesConfig,
                 admission: Any | None = None, max_tokens: int | None = None) -> None:
        self.engine = engine
        self.monitor = monitor
        self.config = config
        self.admission = admission  # jobs.WorkerPool of the attribution service
        self.max_tokens = max_tokens or 1 << 30  # prompt + new tokens of one steering request

    @property
    def labels(self) -> Labels:
        return self.engine.labels if self.engine is not None else Labels()

    def _engine(self) -> FeaturesEngine:
        if self.engine is None:
            raise NotConfigured(NO_TRANSCODERS)
        return self.engine

    async def feature_activations(self, given: TokensInput, *, features: Sequence[FeatureRef] = (),
                                  top_k: int = 0) -> list[PositionActivations]:
        engine = self._engine()
        return await asyncio.to_thread(engine.feature_activations, given, features=features, top_k=top_k)

    async def steer(self, query: SteerQuery) -> SteerResult:
        engine = self._engine()
        prompt_ids = await asyncio.to_thread(engine.check_steer, query, self.max_tokens)
        if self.admission is None:
            return await asyncio.to_thread(engine.steer, query, prompt_ids)
        return await self.admission.run(lambda progress, should_stop: engine.steer(query, prompt_ids),
                                        on_event=lambda event: None, stop=threading.Event())

    # ---- monitoring ----------------------------------------------------------------------

    def should_monitor(self, asked: bool) -> bool:
        """Monitor this generation request? (asked by the request, or --monitor-all)."""
        if self.monitor is None:
            if asked:
                raise NotConfigured(NO_WATCHLIST)
            return False
        return asked or self.config.monitor_all

    def monitor_stream(self, chunks: AsyncIterator[GenerationChunk], prompt_ids: Sequence[int],
                       decode: Callable[[list[int]], str]) -> AsyncIterator[MonitoredChunk]:
        assert self.monitor is not None
        return monitor_stream(chunks, monitor=self.monitor, prompt_ids=prompt_ids,
                              interval=self.config.monitor_interval, decode=decode)


def build_features(config: FeaturesConfig, registry: CollectorRegistry, rm: ReplacementModel | None, *,
                   admission: Any | None = None, max_tokens: int | None = None) -> FeaturesService:
    """Load and check the labels and watchlist files; FeatureFileError stops the server's start-up."""
    if rm is None:
        for flag, path in (("--labels", config.labels), ("--watchlist", config.watchlist)):
            if path is not None:
                raise FeatureFileError(f"{flag} {path} needs --transcoders (features are read from them)")
        return FeaturesService(engine=None, monitor=None, config=config)
    shape = TranscoderShape(rm.transcoders.n_layers, rm.transcoders.d_transcoder)
    labels = load_labels(Path(config.labels), shape) if config.labels else Labels()
    engine = FeaturesEngine(rm, labels=labels, config=config)
    monitor = None
    if config.watchlist:
        watched = load_watchlist(Path(config.watchlist), shape, labels)
        monitor = Monitor(watched, engine, FeatureMetrics(registry, watched))
    return FeaturesService(engine=engine, monitor=monitor, config=config, admission=admission,
                           max_tokens=max_tokens)
