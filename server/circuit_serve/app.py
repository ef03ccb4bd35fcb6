"""Assemble and run the server: runtime (engines + metrics), gRPC services, health, shutdown.

    runtime = Runtime.create(config)              # registry, metrics, every part (nothing loaded yet)
    server, port, health = await build_server("127.0.0.1:0", runtime)
    await runtime.start()                         # load the model; then mark SERVING
    await mark_serving(health, runtime.service_names)

`serve(config)` does all of that, serves /metrics (and, with --health-port, grpc.health.v1 alone
in plaintext), and on SIGTERM/SIGINT stops accepting calls, gives in-flight calls
`grace_period_s`, then shuts the engine down. When vLLM's engine dies it turns Generation and
the overall status NOT_SERVING at once and exits non-zero within `engine_dead_exit_s`.

Adding a service: write `add_to_server(runtime, server) -> full_service_name` next to
its servicer in `circuit_serve.rpc` and append it to `SERVICES` below. Put what it
needs (an engine, a cache, its metrics object) on `Runtime`, built in `Runtime.create`.

Each part is built with its collaborators and has one face: `async start()`, called in the
order of `Runtime.start`, and `shutdown()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_reflection.v1alpha import reflection

from circuit_serve.attribution import AttributionService
from circuit_serve.attribution import build_service as build_attribution
from circuit_serve.attribution.engine import TracingEngine
from circuit_serve.attribution.loading import Replacement, apply_plan, plan_for_serving
from circuit_serve.auth import TokenTable, current_caller
from circuit_serve.config.describe import describe_limits
from circuit_serve.config.security import Reflection, is_loopback
from circuit_serve.config.serve import ServeConfig
from circuit_serve.features.service import FeaturesService
from circuit_serve.generation.engine import GenerationEngine, cache_vllm_environment
from circuit_serve.jobs import WorkerPool
from circuit_serve.jobs.executor import BoundedExecutor
from circuit_serve.metrics import CollectorRegistry, new_registry
from circuit_serve.metrics.auth import AuthMetrics
from circuit_serve.metrics.exporter import start_metrics_server
from circuit_serve.metrics.generation import VllmMetrics
from circuit_serve.metrics.rpc import RpcMetrics
from circuit_serve.metrics.serving import ServingMetrics
from circuit_serve.rpc import attribution_servicer, features, generation_servicer, transport, unserved
from circuit_serve.rpc.auth import AuthInterceptor
from circuit_serve.rpc.convert_attribution import GRAPH_FORMAT
from circuit_serve.rpc.convert_graph import serialize_graph
from circuit_serve.rpc.health import Health, start_health_server
from circuit_serve.rpc.interceptors import ServingInterceptor

log = logging.getLogger(__name__)

_SERVER_OPTIONS = [
    ("grpc.so_reuseport", 0),  # a taken port is an error, not a silently shared one
    ("grpc.max_send_message_length", 64 << 20),
    # A unary Generate writes nothing while it decodes; client keepalive pings in that
    # window must not count as abuse (GOAWAY "too_many_pings" would fail every call).
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.http2.min_ping_interval_without_data_ms", 10000),
    ("grpc.keepalive_permit_without_calls", 1),
]


_DRAIN_WINDOW_S = 1.0
_ENGINE_POLL_S = 0.25  # how often the watchdog asks whether vLLM's engine is alive
NO_GENERATION = (
    "this replica runs --role attribution: it loads no vLLM and serves no generation; "
    "send Generation calls to a replica started with --role generation or --role all"
)


@dataclass
class Runtime:
    """Everything loaded once at start-up and shared by the servicers."""

    config: ServeConfig
    registry: CollectorRegistry
    rpc_metrics: RpcMetrics
    generation: GenerationEngine
    replacement: Replacement  # the replacement model, loaded in start() when --transcoders is given
    attribution: AttributionService
    features: FeaturesService
    service_names: list[str] = field(default_factory=list)  # filled by build_server
    unserved: set[str] = field(default_factory=set)  # services registered only to refuse (--role)
    draining: bool = False  # set on shutdown: new calls get UNAVAILABLE, in-flight ones finish
    auth_metrics: AuthMetrics | None = None
    tokens: TokenTable | None = None  # --auth-tokens; None: every caller is ANONYMOUS (all scopes)
    failed_services: list[str] = field(default_factory=list)  # NOT_SERVING: their model failed to load

    @classmethod
    def create(cls, config: ServeConfig, registry: CollectorRegistry | None = None) -> Runtime:
        registry = registry or new_registry()
        VllmMetrics(registry)  # vLLM's own metrics (vllm:*), recorded by its Prometheus logger
        engine = GenerationEngine(config.engine, limits=config.limits)
        replacement = Replacement.from_config(config.attribution, config.engine.model, serve_dtype=config.engine.dtype)
        steering = WorkerPool(
            workers=config.features.steer_workers,
            max_queued=config.features.steer_max_queued,
            metrics=None,
            name="steering",
        )
        # reads --labels/--watchlist now; steered generations have their own pool
        features = FeaturesService(
            config.features,
            registry,
            replacement=replacement,
            admission=steering,
            limits=config.limits,
            max_tokens=config.attribution.max_prompt_tokens,
            generation=engine if config.attribution.role != "attribution" else None,  # Steer on vLLM
        )

        def tracing_engine() -> TracingEngine | None:  # by attribution.start(), after features.start() checked labels
            rm = replacement.model
            return (
                None
                if rm is None
                else TracingEngine(
                    rm, serialize=serialize_graph, graph_format=GRAPH_FORMAT, labels=features.labels.as_dict()
                )
            )  # `clerp` in graph JSON

        attribution = build_attribution(
            config.attribution,
            registry,
            engine=None,
            limits=config.limits,
            graph_format=GRAPH_FORMAT,
            engine_factory=tracing_engine,
        )
        if config.attribution.transcoders is not None:  # completions are kept for audits only when they can be audited
            # Steered completions are kept with their interventions; auditing one is refused
            # (FAILED_PRECONDITION naming them): graphs of steered runs are not computed.
            engine.add_finish_listener(
                lambda r: attribution.on_completion(
                    r.request_id,
                    r.prompt_token_ids,
                    r.token_ids,
                    tenant=current_caller().name,
                    interventions=r.interventions,
                )
            )
        auth_metrics = AuthMetrics(registry)
        tokens_file = config.security.auth_tokens
        return cls(
            config=config,
            registry=registry,
            rpc_metrics=RpcMetrics(registry),
            generation=engine,
            replacement=replacement,
            attribution=attribution,
            features=features,
            auth_metrics=auth_metrics,
            tokens=TokenTable(tokens_file, on_reload=auth_metrics.reloaded) if tokens_file else None,
        )

    async def start(self) -> None:
        """Load the model(s). Calls made before this finishes get UNAVAILABLE.

        The GPU memory plan is applied first; then the replacement model (with the transcoders)
        loads: in-engine monitoring hands vLLM the watched encoder rows when vLLM starts. When the
        replacement model fails to load, `failed_services` names Attribution and Features (health
        says NOT_SERVING for them, their calls get UNAVAILABLE) and vLLM starts unmonitored."""
        plan = await asyncio.to_thread(plan_for_serving, self.config)  # None unless sharing a GPU with vLLM
        planned = apply_plan(self.generation.config, plan)  # raises PlanRefused
        generates = self.config.attribution.role != "attribution"  # --role attribution loads no vLLM
        try:
            await self.replacement.start()
        except Exception:  # a transcoder set that fails to load must not take generation down with it
            if not generates:
                raise  # an attribution-only replica is nothing without it: fail the start (the pod restarts)
            log.exception("the replacement model failed to load: Attribution and Features are NOT_SERVING")
            self.failed_services = [attribution_servicer.SERVICE_NAME, features.SERVICE_NAME]
        if not self.failed_services:  # else both answer UNAVAILABLE, and generation runs unmonitored
            await self.features.start()  # checks --labels/--watchlist against the transcoders
            await self.attribution.start()  # the graph engine, with the checked labels
        if generates:
            await self.generation.start(self.features.engine_monitor(Path(tempfile.gettempdir())), planned=planned)

    def limits(self) -> dict[str, float]:
        """Every input limit in force, by its `circuit.v1.Limits` field name (ModelInfo, README)."""
        model = self.generation.describe()
        return describe_limits(self.config, max_model_len=model.max_model_len, vocab_size=model.vocab_size)

    def transcoders_info(self) -> dict | None:
        """What transcoder set is loaded (ModelInfo.transcoders); None before loading or without one."""
        return self.replacement.describe()

    def shutdown(self) -> None:
        self.attribution.shutdown()
        self.features.shutdown()
        self.replacement.shutdown()
        self.generation.shutdown()


# Each entry registers one servicer on the server and returns its full service name.
ServiceRegistration = Callable[[Runtime, grpc.aio.Server], str]


def _generation(runtime: Runtime, server: grpc.aio.Server) -> str:
    if runtime.config.attribution.role == "attribution":
        name = unserved.add_to_server(generation_servicer.SERVICE_NAME, server, NO_GENERATION)
        runtime.unserved.add(name)
        return name
    return generation_servicer.add_to_server(
        runtime.generation, server, runtime.features, limits=runtime.limits, transcoders=runtime.transcoders_info
    )


SERVICES: list[ServiceRegistration] = [
    _generation,
    lambda runtime, server: attribution_servicer.add_to_server(runtime.attribution, server),
    lambda runtime, server: features.add_to_server(runtime.features, server),
]


async def build_server(
    address: str, runtime: Runtime, *, services: list[ServiceRegistration] | None = None
) -> tuple[grpc.aio.Server, int, Health]:
    """A started grpc.aio server on `address` ("host:0" picks a free port): the services,
    health (NOT_SERVING until `mark_serving`) and reflection. Returns (server, port, health)."""
    interceptors: list[grpc.aio.ServerInterceptor] = [
        ServingInterceptor(runtime.rpc_metrics, draining=lambda: runtime.draining)
    ]
    security, limits = runtime.config.security, runtime.config.limits
    if runtime.tokens is not None:
        assert runtime.auth_metrics is not None
        interceptors.append(AuthInterceptor(runtime.tokens, runtime.auth_metrics, reflection=security.reflection))
    asyncio.get_running_loop().set_default_executor(  # asyncio.to_thread: bounded queue
        BoundedExecutor(limits.executor_threads, limits.max_executor_queue)
    )
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[*_SERVER_OPTIONS, ("grpc.max_receive_message_length", limits.max_request_bytes)],
        maximum_concurrent_rpcs=limits.max_concurrent_rpcs,
    )
    names = [register(runtime, server) for register in (SERVICES if services is None else services)]
    runtime.service_names = names

    health_state = Health(ServingMetrics(runtime.registry))
    health_name = health_state.add_to_server(server)
    if security.reflection != Reflection.OFF:
        reflection.enable_server_reflection([*names, health_name, reflection.SERVICE_NAME], server)

    port = transport.bind(server, address, security)
    if port == 0:
        raise OSError(f"cannot bind the gRPC server to {address}")
    await server.start()
    await health_state.set(["", *names], serving=False)
    return server, port, health_state


async def mark_serving(health_state: Health, names: list[str]) -> None:
    await health_state.set(["", *names], serving=True)


async def watch_engine(engine: GenerationEngine, health_state: Health, on_dead: Callable[[], None]) -> None:
    """Poll vLLM's engine; once it is dead, turn Generation and the overall status NOT_SERVING
    (the other services keep their status until shutdown) and call `on_dead()`."""
    while not engine.dead:
        await asyncio.sleep(_ENGINE_POLL_S)
    log.error("vLLM's engine died: Generation and the server are NOT_SERVING; the process exits")
    await health_state.set(["", generation_servicer.SERVICE_NAME], serving=False)
    on_dead()


def exit_after(delay_s: float, status: int) -> threading.Timer:
    """A daemon timer that ends the process with `status` after `delay_s`, whatever the event loop
    is doing (the bound on a shutdown after vLLM's engine died)."""
    timer = threading.Timer(delay_s, os._exit, args=(status,))
    timer.daemon = True
    timer.start()
    return timer


def http_front_door(runtime: Runtime):
    """The OpenAI-compatible HTTP server over the runtime's engine, tokens and TLS (not started).
    Imported here, not at the top: it loads vLLM's protocol models (seconds), wanted only with --http-port."""
    from circuit_serve.http import HttpFrontDoor

    config = runtime.config
    return HttpFrontDoor(
        runtime.generation,
        runtime.features,
        registry=runtime.registry,
        tokens=runtime.tokens,
        auth_metrics=runtime.auth_metrics,
        security=config.security,
        limits=config.limits,
        draining=lambda: runtime.draining,
        grace_period_s=config.grace_period_s,
    )


async def serve(config: ServeConfig) -> int:
    """Run until SIGTERM/SIGINT; return the process exit status."""
    runtime = Runtime.create(config)
    metrics_server = None
    if config.metrics_port:
        metrics_server = start_metrics_server(runtime.registry, host=config.metrics_host, port=config.metrics_port)
        log.info("metrics on http://%s:%d/metrics", config.metrics_host, metrics_server.port)
        if runtime.tokens is not None and not is_loopback(config.metrics_host):
            log.warning(
                "/metrics on %s has no authentication; bind it with --metrics-host 127.0.0.1 "
                "(or a private interface) if only this machine should read it",
                config.metrics_host,
            )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if runtime.tokens is not None:  # rotate tokens: calls in flight finish, new calls see the new file
        loop.add_signal_handler(signal.SIGHUP, runtime.tokens.reload)

    server, port, health_state = await build_server(config.address, runtime)
    health_server = None
    if config.health_address is not None:
        health_server, health_port = await start_health_server(health_state, config.health_address)
        log.info("grpc.health.v1 alone, in plaintext, on %s:%d", config.host, health_port)
    exit_status = 0
    grace_s = config.grace_period_s

    def engine_died() -> None:
        nonlocal exit_status, grace_s
        exit_status = 1
        grace_s = min(grace_s, config.engine_dead_exit_s / 2)
        exit_after(config.engine_dead_exit_s, exit_status)
        stop.set()

    if runtime.tokens is not None:
        log.info(
            "authentication: %d tokens from %s (SIGHUP reloads it); reflection: %s",
            len(runtime.tokens),
            config.security.auth_tokens,
            config.security.reflection,
        )
    elif not is_loopback(config.host):
        log.warning("no --auth-tokens: every caller on the network may use every RPC and audit any completion")
    log.info("gRPC listening on %s:%d (NOT_SERVING until the model is loaded)", config.host, port)
    http = None if config.http_port is None else http_front_door(runtime)
    watchdog = None
    try:
        if http is not None:  # answers 503 until the model is loaded
            await http.start(config.host, config.http_port)
        loading = asyncio.create_task(runtime.start())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if loading.done():
            loading.result()  # raise a load failure
            serving = [n for n in runtime.service_names if n not in runtime.unserved]
            await mark_serving(health_state, serving)
            await health_state.set(runtime.failed_services, serving=False)
            log.info("SERVING %s", ", ".join(n for n in serving if n not in runtime.failed_services))
            if runtime.config.attribution.role != "attribution":
                cache_vllm_environment()
                watchdog = asyncio.create_task(watch_engine(runtime.generation, health_state, engine_died))
            await stopping
        else:
            loading.cancel()
        log.info("shutting down: no new calls; in-flight calls get %.1fs", grace_s)
    finally:
        # Drain: health says NOT_SERVING and new calls get UNAVAILABLE (retryable) from the
        # interceptor for a moment, so balancers and clients move on before the transport
        # closes; then in-flight calls get the grace period.
        runtime.draining = True
        if watchdog is not None:
            watchdog.cancel()
        await health_state.enter_graceful_shutdown()
        await asyncio.sleep(min(_DRAIN_WINDOW_S, grace_s))
        if http is not None:
            await http.shutdown()
        draining = asyncio.create_task(runtime.attribution.drain(grace_s))  # fleet jobs
        await server.stop(grace_s)
        await draining
        runtime.shutdown()
        if health_server is not None:
            await health_server.stop(0)
        if metrics_server is not None:
            metrics_server.stop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        if exit_status != 0:
            # The interpreter's own exit would now join what is left of vLLM (its worker process,
            # resource tracker, threads): seen taking 12 s, where the daemon timer cannot fire.
            log.info("stopped after vLLM's engine died: exit status %d", exit_status)
            logging.shutdown()
            os._exit(exit_status)
        log.info("stopped")
    return exit_status
