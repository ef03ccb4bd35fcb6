"""FeaturesService: the async face of the features engine for the RPC layer and generation.

- `feature_activations` runs off the event loop;
- `steer` is admitted by the attribution service's worker pool (same queue, same limits);
- `stream` / `generate` run a monitored generation request (see `streaming`); requests that
  are not monitored never reach this module.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from circuit_serve.config.features import FeaturesConfig
from circuit_serve.errors import BackendUnavailable, NotConfigured
from circuit_serve.features.engine import FeaturesEngine, PositionActivations, SteerQuery, TokensInput
from circuit_serve.features.files import FeatureFileError
from circuit_serve.features.labels import Labels, check_labels, read_labels
from circuit_serve.features.monitor import Monitor
from circuit_serve.features.steering import SteerResult
from circuit_serve.features.streaming import MonitoredChunk, collect, monitor_stream
from circuit_serve.features.types import FeatureRef, MonitorReport, TranscoderShape
from circuit_serve.features.watchlist import check_watchlist, read_watchlist
from circuit_serve.generation.engine import GenerationEngine
from circuit_serve.generation.types import GenerationRequest, GenerationResult
from circuit_serve.metrics.features import FeatureMetrics
from circuit_serve.tracing.replacement import ReplacementModel

NO_TRANSCODERS = ("features are not enabled on this server: it was started without transcoders; "
                  "restart `circuit-serve serve` with --transcoders DIR")
NO_WATCHLIST = ("monitoring is not enabled on this server: it was started without a watchlist; "
                "restart `circuit-serve serve` with --watchlist FILE")


class FeaturesService:
    """Created with the server; `load` attaches the replacement model once it is loaded (and reads
    and checks the labels and watchlist files: FeatureFileError stops the server's start-up)."""

    def __init__(self, config: FeaturesConfig, registry: CollectorRegistry) -> None:
        """Reads the files' syntax now, so a malformed file stops the server before any model loads."""
        self.config = config
        self.registry = registry
        self._labels = read_labels(Path(config.labels)) if config.labels else Labels()
        self._watched = read_watchlist(Path(config.watchlist)) if config.watchlist else ()
        self.engine: FeaturesEngine | None = None
        self.monitor: Monitor | None = None
        self.admission: Any | None = None  # the attribution service's jobs.WorkerPool
        self.max_tokens = 1 << 30  # prompt + new tokens of one steering request
        self._state = "loading"  # -> "ready" | "disabled" (no transcoders)

    def load(self, rm: ReplacementModel | None, *, admission: Any | None = None,
             max_tokens: int | None = None) -> None:
        """Attach the replacement model (None: the server runs without transcoders)."""
        config = self.config
        if rm is None:
            for flag, path in (("--labels", config.labels), ("--watchlist", config.watchlist)):
                if path is not None:
                    raise FeatureFileError(f"{flag} {path} needs --transcoders (features are read from them)")
            self._state = "disabled"
            return
        shape = TranscoderShape(rm.transcoders.n_layers, rm.transcoders.d_transcoder)
        labels = check_labels(self._labels, shape)
        engine = FeaturesEngine(rm, labels=labels, config=config)
        if config.watchlist:
            watched = check_watchlist(self._watched, Path(config.watchlist), shape, labels)
            self.monitor = Monitor(watched, engine, FeatureMetrics(self.registry, watched))
        self.engine = engine
        self.admission = admission
        self.max_tokens = max_tokens or self.max_tokens
        self._state = "ready"

    @property
    def labels(self) -> Labels:
        return self.engine.labels if self.engine is not None else Labels()

    def _engine(self) -> FeaturesEngine:
        if self._state == "loading":
            raise BackendUnavailable("the replacement model is not loaded yet; retry shortly")
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
        return await self.admission.run(lambda progress, should_stop: engine.steer(query, prompt_ids, should_stop),
                                        on_event=lambda event: None, stop=threading.Event())

    # ---- monitoring ----------------------------------------------------------------------

    def should_monitor(self, asked: bool) -> bool:
        """Monitor this generation request? (asked by the request, or --monitor-all)."""
        if self.monitor is None:
            if asked:
                self._engine()
                raise NotConfigured(NO_WATCHLIST)
            return False
        return asked or self.config.monitor_all

    def stream(self, generation: GenerationEngine, request: GenerationRequest) -> AsyncIterator[MonitoredChunk]:
        """A monitored generation stream (vLLM underneath); the last item carries the report."""
        assert self.monitor is not None and self.engine is not None
        if request.prompt_token_ids:
            prompt_ids = list(request.prompt_token_ids)
        elif request.messages:
            prompt_ids = generation.chat_tokens(request.messages)  # as the engine renders them
        else:
            prompt_ids, _ = generation.tokenize(request.prompt or "")  # as the engine tokenizes it
        tokenizer = self.engine.rm.tokenizer
        return monitor_stream(generation.stream(request), monitor=self.monitor, prompt_ids=prompt_ids,
                              interval=self.config.monitor_interval,
                              decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=True))

    async def generate(self, generation: GenerationEngine,
                       request: GenerationRequest) -> tuple[GenerationResult, MonitorReport]:
        """A monitored unary generation: the same stream, collected."""
        return await collect(self.stream(generation, request))
