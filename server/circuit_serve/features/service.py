"""FeaturesService: the async face of the features engine for the RPC layer and generation.

- `feature_activations` runs off the event loop;
- `steer` runs on vLLM when the generation engine can steer inside its forward pass
  (`vllm_steering`: the steered and the default completion in one batch); otherwise (no vLLM
  here, vLLM compiles its layers, or the request is beyond vLLM's limits) on the replacement
  model, admitted by its own worker pool (`--steer-workers`, `--steer-max-queued`);
- `resolve` turns what a generation request asks of monitoring into a checked `WatchRequest`;
  the monitoring itself runs inside vLLM's forward pass (circuit_serve.monitoring), set up by
  `engine_monitor` before the generation engine starts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry

from circuit_serve.config.features import FeaturesConfig
from circuit_serve.config.limits import InputLimits
from circuit_serve.domain.errors import BackendUnavailable, InvalidRequest, NotConfigured
from circuit_serve.domain.features import FeatureRef, MonitorAsk, TranscoderShape, WatchedFeature, WatchRequest
from circuit_serve.features import vllm_steering
from circuit_serve.features.engine import FeaturesEngine, PositionActivations, SteerQuery, TokensInput
from circuit_serve.features.files import FeatureFileError
from circuit_serve.features.labels import Labels, check_labels, read_labels
from circuit_serve.features.presets import SteeringPresets, check_presets, read_presets
from circuit_serve.features.steering import SteerResult
from circuit_serve.features.vllm_steering import SteeringGenerator
from circuit_serve.features.watchlist import check_watchlist, read_watchlist
from circuit_serve.jobs.events import Computed, JobEvent, Work
from circuit_serve.metrics.features import FeatureMetrics, SteerMetrics
from circuit_serve.monitoring.monitor import EngineMonitor
from circuit_serve.tracing.replacement import ReplacementModel

NO_TRANSCODERS = (
    "features are not enabled on this server: it was started without transcoders; "
    "restart `circuit-serve serve` with --transcoders DIR"
)
NO_WATCHLIST = (
    "this server has no watchlist: it was started without --watchlist; send the features to "
    "watch in the request's `watch` rules, or restart `circuit-serve serve` with --watchlist FILE"
)


class LoadedModel(Protocol):
    """The replacement model once the server has loaded it (attribution.loading.Replacement)."""

    @property
    def model(self) -> ReplacementModel | None:
        """None before loading, and on a server without transcoders."""


class Admission(Protocol):
    """Where steered generations wait for a worker (jobs.WorkerPool)."""

    async def run(self, work: Work, *, on_event: Callable[[JobEvent], None], stop: threading.Event) -> Computed: ...

    def shutdown(self) -> None: ...


class FeaturesService:
    """Created with the server; `start()` takes the replacement model once it is loaded (and checks
    the labels and watchlist files against it: FeatureFileError stops the server's start-up)."""

    def __init__(
        self,
        config: FeaturesConfig,
        registry: CollectorRegistry,
        *,
        replacement: LoadedModel,
        admission: Admission | None = None,
        limits: InputLimits | None = None,
        max_tokens: int | None = None,
        generation: SteeringGenerator | None = None,
    ) -> None:
        """Reads the files' syntax now, so a malformed file stops the server before any model loads.

        `admission`: the steering pool (None: steered generations run at once, off the event loop);
        `max_tokens`: prompt + new tokens of one steering request; `generation`: vLLM, which serves
        Steer when it can (None: the replacement model serves every Steer call)."""
        self.config = config
        self.limits = limits or InputLimits()
        self.registry = registry
        self.replacement = replacement
        self.admission = admission
        self.max_tokens = max_tokens or 1 << 30
        self.generation = generation
        self.steer_metrics = SteerMetrics(registry)
        self._labels = read_labels(Path(config.labels)) if config.labels else Labels()
        self._watched = read_watchlist(Path(config.watchlist)) if config.watchlist else ()
        self.presets = _read_presets(config)  # steering presets: features checked by `start`
        self.engine: FeaturesEngine | None = None
        self.watched: tuple[WatchedFeature, ...] = ()  # checked against the transcoders by `start`
        self.metrics: FeatureMetrics | None = None
        self._state = "loading"  # -> "ready" | "disabled" (no transcoders)

    async def start(self) -> None:
        """Take the loaded replacement model (None: the server runs without transcoders)."""
        config = self.config
        rm = self.replacement.model
        if rm is None:
            for flag, path in (
                ("--labels", config.labels),
                ("--watchlist", config.watchlist),
                ("--steering", config.steering),
            ):
                if path is not None:
                    raise FeatureFileError(f"{flag} {path} needs --transcoders (features are read from them)")
            self._state = "disabled"
            return
        shape = TranscoderShape(rm.transcoders.n_layers, rm.transcoders.d_transcoder)
        labels = check_labels(self._labels, shape)
        engine = FeaturesEngine(rm, labels=labels, config=config, limits=self.limits)
        if config.watchlist:
            self.watched = check_watchlist(self._watched, Path(config.watchlist), shape, labels)
            self.metrics = FeatureMetrics(self.registry, self.watched)
        if config.steering:
            check_presets(self.presets.presets, Path(config.steering), shape)
        self.engine = engine
        self._state = "ready"

    def shutdown(self) -> None:
        """Stop taking steered generations; running ones stop at their next token."""
        if self.admission is not None:
            self.admission.shutdown()

    @property
    def labels(self) -> Labels:
        return self.engine.labels if self.engine is not None else Labels()

    def _engine(self) -> FeaturesEngine:
        if self._state == "loading":
            raise BackendUnavailable("the replacement model is not loaded yet; retry shortly")
        if self.engine is None:
            raise NotConfigured(NO_TRANSCODERS)
        return self.engine

    async def feature_activations(
        self, given: TokensInput, *, features: Sequence[FeatureRef] = (), top_k: int = 0
    ) -> list[PositionActivations]:
        engine = self._engine()
        return await asyncio.to_thread(engine.feature_activations, given, features=features, top_k=top_k)

    async def steer(self, query: SteerQuery) -> SteerResult:
        engine = self._engine()
        prompt_ids = await asyncio.to_thread(engine.check_steer, query, self.max_tokens)
        s = query.sampling
        if self.generation is not None and self.generation.steers(len(prompt_ids), s.max_new_tokens):
            self.steer_metrics.calls.labels("vllm").inc()
            return await vllm_steering.steer(
                self.generation,
                prompt_ids,
                query.interventions,
                s,
                with_default=query.with_default,
                decode=engine.target.decode,
            )
        self.steer_metrics.calls.labels("replacement").inc()
        if self.admission is None:
            return await asyncio.to_thread(engine.steer, query, prompt_ids)
        return await self.admission.run(
            lambda progress, should_stop: engine.steer(query, prompt_ids, should_stop),
            on_event=lambda event: None,
            stop=threading.Event(),
        )

    # ---- monitoring ----------------------------------------------------------------------

    def engine_monitor(self, work_dir: Path):
        """The in-engine monitor for the generation engine (None without transcoders)."""
        if self.engine is None:
            return None
        rm = self.engine.rm
        return EngineMonitor(
            rm.transcoders,
            self.watched,
            model_type=rm.arch.model_type,
            request_slots=self.config.monitor_slots,
            max_request_watch=self.config.max_request_watch,
            work_dir=work_dir,
            sink=self.metrics.observe if self.metrics is not None else None,
            cache_bytes=self.config.monitor_cache_mib << 20,
            max_interventions=self.config.max_interventions,
            max_intervention_positions=self.limits.max_positions,
        )

    def resolve(self, ask: MonitorAsk) -> WatchRequest | None:
        """How a generation request is monitored (None: it is not); InvalidRequest / NotConfigured
        for rules this server cannot apply."""
        monitored = ask.any or (self.config.monitor_all and bool(self.watched))
        if not monitored:
            return None
        engine = self._engine()
        if not ask.rules and not self.watched:
            raise NotConfigured(NO_WATCHLIST)
        limit = self.config.max_request_watch
        if len(ask.rules) > limit:
            raise InvalidRequest(
                f"has {len(ask.rules)} entries; this server allows at most {limit} per request", field="watch"
            )
        names = {w.name for w in self.watched}
        rules = []
        for i, w in enumerate(ask.rules):
            if (problem := engine.shape.check(w.feature, where=f"watch[{i}]")) is not None:
                raise InvalidRequest(problem, field="watch")
            if not w.name or w.name in names:
                raise InvalidRequest(
                    f"watch[{i}].name {w.name!r} is empty or already used (by the server watchlist "
                    "or an earlier rule); give each rule its own name",
                    field="watch",
                )
            names.add(w.name)
            rules.append(dataclasses.replace(w, label=engine.labels.get(w.feature)))
        return WatchRequest((*self.watched, *rules), n_server=len(self.watched), values=ask.values)


def _read_presets(config: FeaturesConfig) -> SteeringPresets:
    """The --steering file's presets and the --steering-default among them (FeatureFileError otherwise)."""
    if config.steering is None:
        return SteeringPresets()
    presets = read_presets(Path(config.steering))
    default = config.steering_default
    if default is not None and default not in presets:
        raise FeatureFileError(
            f"--steering-default {default!r} is not a preset of {config.steering}; its presets: {', '.join(presets)}"
        )
    return SteeringPresets(presets, default)
