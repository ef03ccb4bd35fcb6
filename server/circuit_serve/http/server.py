"""The OpenAI-compatible HTTP front door: an aiohttp server on the running event loop (the one gRPC
serves on), over the same `GenerationEngine` and features service.

    door = HttpFrontDoor(engine, features, registry=..., tokens=..., security=..., limits=..., draining=...)
    port = await door.start("127.0.0.1", 8000)
    ...
    await door.shutdown()

Each request, in the middleware `_served`:
1. is counted and timed by route and status (`circuit_http_*`, metrics/http.py);
2. is refused with 503 while the server drains, 429 above `--max-concurrent-rpcs` requests in flight
   (both with `Retry-After`), 401 without or with an unknown bearer token, 403 without the route's
   scope (the same tokens file and scopes as gRPC; the caller becomes `current_caller()`, so the
   completion is kept for audits under its tenant);
3. runs its handler; a domain error becomes its HTTP status and OpenAI error JSON (http/status.py),
   anything unexpected a 500 carrying only an error id.

Generation requests are parsed with vLLM's protocol models (http/openai_request.py), go through
`GenerationEngine.generate` / `stream` exactly as gRPC's do (limits, chat template, monitoring,
audit records, generation metrics) and are shaped back by http/openai_response.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from circuit_serve.auth.bearer import MALFORMED, UNKNOWN, bearer_principal, scope_refusal
from circuit_serve.auth.principal import Scope, calling_as, current_caller
from circuit_serve.auth.tokens import TokenTable
from circuit_serve.config.limits import InputLimits
from circuit_serve.config.security import SecurityConfig
from circuit_serve.domain.errors import CircuitError
from circuit_serve.features.service import FeaturesService
from circuit_serve.generation.engine import GenerationEngine
from circuit_serve.http.openai_request import OpenAICall, parse_chat, parse_completion
from circuit_serve.http.openai_response import DONE, Shaper
from circuit_serve.http.status import HttpError, forbidden, http_error, unauthenticated
from circuit_serve.http.tls import ssl_context
from circuit_serve.metrics import CollectorRegistry
from circuit_serve.metrics.auth import AuthMetrics
from circuit_serve.metrics.http import HttpMetrics

log = logging.getLogger(__name__)

AUTHENTICATED = "authenticated"  # any valid token (as rpc/auth.py)
_NO_TOKEN = "this server requires a token: send the header `Authorization: Bearer <token>` (OpenAI SDKs: api_key=)"
_AUTH_MESSAGES = {"missing_token": _NO_TOKEN, "malformed_header": MALFORMED, "unknown_token": UNKNOWN}
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_DRAINING = "the server is shutting down; retry on another replica"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpFrontDoor:
    def __init__(
        self,
        engine: GenerationEngine,
        features: FeaturesService | None,
        *,
        registry: CollectorRegistry,
        tokens: TokenTable | None,
        auth_metrics: AuthMetrics | None,
        security: SecurityConfig,
        limits: InputLimits,
        draining: Callable[[], bool] = lambda: False,
        grace_period_s: float = 10.0,
    ) -> None:
        self._engine = engine
        self._features = features
        self._metrics = HttpMetrics(registry)
        self._tokens = tokens
        self._auth_metrics = auth_metrics
        self._security = security
        self._max_in_flight = limits.max_concurrent_rpcs
        self._in_flight = 0
        self._draining = draining
        self._grace_period_s = grace_period_s  # requests in flight at shutdown get this long
        self._runner: web.AppRunner | None = None
        # route -> scope needed (None: open)
        self._routes: dict[str, tuple[str, Handler, Scope | str | None]] = {
            "/v1/completions": ("POST", self._completions, Scope.GENERATE),
            "/v1/chat/completions": ("POST", self._chat, Scope.GENERATE),
            "/v1/models": ("GET", self._models, AUTHENTICATED),
            "/health": ("GET", self._health, None),
        }
        self._app = web.Application(middlewares=[self._served], client_max_size=limits.max_request_bytes)
        for path, (method, handler, _) in self._routes.items():
            self._app.router.add_route(method, path, handler)

    # ---- lifecycle -------------------------------------------------------------

    async def start(self, host: str, port: int) -> int:
        """Bind and serve on the running loop; returns the bound port (`port` 0 picks one)."""
        self._runner = web.AppRunner(
            self._app, handler_cancellation=True, access_log=None, shutdown_timeout=self._grace_period_s
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=ssl_context(self._security), reuse_port=False)
        await site.start()
        bound = self._runner.addresses[0][1]
        log.info("OpenAI HTTP on %s://%s:%d/v1", "https" if self._security.tls else "http", host, bound)
        return bound

    async def shutdown(self) -> None:
        """Stop accepting; requests in flight get the grace period."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ---- middleware ------------------------------------------------------------

    @web.middleware
    async def _served(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.path if request.path in self._routes else "other"
        start = time.perf_counter()
        self._metrics.started(route)
        status, admitted = 500, False
        try:
            if route != "/health":
                self._admit(request, route)
                admitted = True
            response = await handler(request)
            status = response.status
            return response
        except HttpError as exc:
            status = exc.status
            return _error(exc)
        except CircuitError as exc:
            err = http_error(exc)
            status = err.status
            return _error(err)
        except web.HTTPException as exc:  # unknown route, wrong method, body over the size limit
            status = exc.status
            return _error(
                HttpError(exc.status, f"{request.method} {request.path}: {exc.reason}", "invalid_request_error")
            )
        except asyncio.CancelledError:
            status = 499  # the client went away; the engine request was aborted
            raise
        except Exception:
            error_id = uuid.uuid4().hex[:16]
            log.exception("unexpected error in %s (error id %s)", route, error_id)
            msg = f"internal error in {route}; error id {error_id} (the server log has the details)"
            return _error(HttpError(500, msg, "server_error", None, "internal"))
        finally:
            if admitted:
                self._in_flight -= 1
            self._metrics.finished(route, status, time.perf_counter() - start)

    def _admit(self, request: web.Request, route: str) -> None:
        """Draining, concurrency and auth refusals; on success the request counts as in flight."""
        if self._draining():
            raise HttpError(503, _DRAINING, "service_unavailable_error", None, "unavailable", 1)
        need = self._routes[route][2] if route in self._routes else AUTHENTICATED
        if self._tokens is not None and need is not None:
            assert self._auth_metrics is not None
            principal, reason = bearer_principal(self._tokens, request.headers.get("Authorization"))
            if principal is None:
                self._auth_metrics.failures.labels(reason).inc()
                raise unauthenticated(_AUTH_MESSAGES[reason])
            if need != AUTHENTICATED and not principal.allows(need):  # type: ignore[arg-type]
                self._auth_metrics.failures.labels("missing_scope").inc()
                raise forbidden(scope_refusal(f"{request.method} {route}", str(need), principal))
            calling_as(principal)  # this request's task only
        if self._in_flight >= self._max_in_flight:
            raise HttpError(
                429,
                f"the server is handling {self._in_flight} requests (--max-concurrent-rpcs); retry shortly",
                "rate_limit_error",
                None,
                "capacity_exceeded",
                1,
            )
        self._in_flight += 1

    # ---- routes ----------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        ok = self._engine.ready and not self._engine.dead and not self._draining()
        return web.json_response({"status": "ok" if ok else "unavailable"}, status=200 if ok else 503)

    async def _models(self, request: web.Request) -> web.Response:
        from_engine = self._engine.describe()  # 503 while loading
        card = {
            "id": from_engine.name,
            "object": "model",
            "created": 0,
            "owned_by": "circuit-serve",
            "root": from_engine.path,
            "max_model_len": from_engine.max_model_len,
        }
        return web.json_response({"object": "list", "data": [card]})

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        limit = self._engine.describe().max_new_tokens_limit
        return await self._generate(request, parse_completion(await _json(request), default_max_tokens=limit))

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        limit = self._engine.describe().max_new_tokens_limit
        return await self._generate(request, parse_chat(await _json(request), default_max_tokens=limit))

    async def _generate(self, request: web.Request, call: OpenAICall) -> web.StreamResponse:
        name = self._engine.describe().name
        if call.model is not None and call.model != name:
            raise HttpError(
                404,
                f"model {call.model!r} is not served here; this server serves {name!r}",
                "not_found_error",
                "model",
                "model_not_found",
            )
        shaper = Shaper(call, name)
        try:
            req = call.request
            if self._features is not None:
                req = dataclasses.replace(req, watch=self._features.resolve(call.ask))
                req = self._features.presets.apply(req, current_caller())  # the default preset, if any
            if not call.stream:
                result = await self._engine.generate(req)
                return web.Response(body=shaper.result(result), content_type="application/json")
            return await self._stream(request, req, shaper)
        except CircuitError as exc:
            raise http_error(exc, call.params) from exc

    async def _stream(self, request: web.Request, req, shaper: Shaper) -> web.StreamResponse:
        """Server-sent events: one per engine chunk (vLLM merges the deltas that pile up while a
        write waits, so a lagging client gets several tokens per event), then usage, then [DONE]."""
        async with contextlib.aclosing(self._engine.stream(req)) as chunks:
            chunk = await anext(chunks)  # request checks raise here, before the status line
            response = web.StreamResponse(headers=_SSE_HEADERS)
            await response.prepare(request)
            try:
                while True:
                    await response.write(shaper.chunk(chunk))
                    if chunk.finish_reason is not None:
                        break
                    chunk = await anext(chunks)
                if shaper.call.include_usage and chunk.usage is not None:
                    await response.write(shaper.usage(chunk.usage))
            except CircuitError as exc:
                await response.write(shaper.error(http_error(exc, shaper.call.params).body()))
            await response.write(DONE)
            await response.write_eof()
            return response


async def _json(request: web.Request) -> object:
    raw = await request.read()
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise HttpError(400, f"the request body is not JSON: {exc}", "invalid_request_error") from None


def _error(exc: HttpError) -> web.Response:
    headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else None
    return web.json_response(exc.body(), status=exc.status, headers=headers)
