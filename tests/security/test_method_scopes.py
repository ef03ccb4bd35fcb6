"""Every RPC the server registers has a scope, and the one wrapping helper keeps each handler's kind.

The scope table (`rpc.auth.SCOPES`) is keyed by the generated method descriptors; here the
services come from what `app.SERVICES` registers on a real grpc.aio server, so a new service
or a new RPC cannot be served unscoped (the interceptor would refuse it; this test says why).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool

from circuit_serve.app import SERVICES, Runtime
from circuit_serve.auth import Scope
from circuit_serve.config.serve import EngineConfig, ServeConfig
from circuit_serve.rpc.auth import AUTHENTICATED, METHOD_SCOPES, SCOPES, method_path
from circuit_serve.rpc.wrapping import refusal, wrapped


def served_service_names() -> list[str]:
    async def register() -> list[str]:
        runtime = Runtime.create(ServeConfig(engine=EngineConfig(model=Path("/nonexistent"))))
        server = grpc.aio.server()
        try:
            return [add(runtime, server) for add in SERVICES]
        finally:
            await server.stop(0)

    return asyncio.run(register())


def test_every_method_of_every_served_service_has_a_scope():
    pool = descriptor_pool.Default()
    served = [m for name in served_service_names() for m in pool.FindServiceByName(name).methods]
    assert served, "no service registered"
    unscoped = [method_path(m) for m in served if m not in SCOPES]
    assert not unscoped, f"give these RPCs a scope in circuit_serve.rpc.auth.SCOPES: {unscoped}"
    assert set(SCOPES) == set(served)  # and no scope for an RPC that is not served
    assert all(need == AUTHENTICATED or isinstance(need, Scope) for need in SCOPES.values())


def test_method_scopes_are_the_descriptor_table_by_call_name():
    assert METHOD_SCOPES == {f"{m.containing_service.full_name}/{m.name}": need for m, need in SCOPES.items()}
    assert METHOD_SCOPES["circuit.v1.Generation/Generate"] == Scope.GENERATE


class _Context:
    """Just enough of a servicer context: `abort` raises, as grpc.aio's does; `write` keeps the
    responses (and waits for `writable` when given: a caller that stopped reading)."""

    def __init__(self, writable: asyncio.Event | None = None) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None
        self.written: list = []
        self.writable = writable

    async def abort(self, code: grpc.StatusCode, message: str) -> None:
        self.aborted = (code, message)
        raise grpc.aio.AbortError()

    async def write(self, response) -> None:
        if self.writable is not None:
            await self.writable.wait()
        self.written.append(response)


async def _unary(request, context):
    return ("answer", request)


async def _stream(request, context):
    for i in range(2):
        yield (i, request)


_KINDS = {
    "unary_unary": grpc.unary_unary_rpc_method_handler(_unary),
    "unary_stream": grpc.unary_stream_rpc_method_handler(_stream),
    "stream_unary": grpc.stream_unary_rpc_method_handler(_unary),
    "stream_stream": grpc.stream_stream_rpc_method_handler(_stream),
}


async def _call(handler: grpc.RpcMethodHandler, kind: str, context: _Context):
    behavior = getattr(handler, kind)
    if kind.endswith("_stream"):  # grpc's reader/writer form: the responses go to context.write
        assert await behavior("req", context) is None
        return context.written
    return await behavior("req", context)


def _layer(events: list, name: str = ""):
    @contextlib.asynccontextmanager
    async def layer(request, context):
        events.append((f"enter{name}", request))
        try:
            yield
        except BaseException as exc:
            events.append((f"exit{name}", type(exc).__name__))
            raise
        events.append(f"exit{name}")

    return layer


@pytest.mark.parametrize("kind", list(_KINDS))
def test_wrapped_keeps_the_kind_and_runs_the_call_inside_the_layer(kind):
    events = []
    handler = wrapped(_KINDS[kind], _layer(events))
    assert [k for k in _KINDS if getattr(handler, k)] == [kind]
    assert (handler.request_streaming, handler.response_streaming) == (
        _KINDS[kind].request_streaming,
        _KINDS[kind].response_streaming,
    )
    result = asyncio.run(_call(handler, kind, _Context()))
    assert result == ([(0, "req"), (1, "req")] if kind.endswith("_stream") else ("answer", "req"))
    assert events == [("enter", "req"), "exit"]


@pytest.mark.parametrize("kind", list(_KINDS))
def test_refusal_answers_its_code_without_running_the_servicer(kind):
    ran = []

    async def servicer(request, context):
        ran.append(request)

    original = _KINDS[kind]._replace(**{kind: servicer})
    context = _Context()
    with pytest.raises(grpc.aio.AbortError):
        asyncio.run(_call(refusal(original, grpc.StatusCode.UNAVAILABLE, "closed"), kind, context))
    assert context.aborted == (grpc.StatusCode.UNAVAILABLE, "closed") and not ran


@pytest.mark.parametrize("kind", ["unary_stream", "stream_stream"])
def test_layers_stack_and_a_cancelled_stream_closes_both_layers_and_the_servicer_at_once(kind):
    """grpc cancels the call's task while it waits to write; the servicer's stream and every layer
    see it then (not when the garbage collector finds an abandoned generator)."""
    events: list = []

    async def servicer(request, context):
        try:
            for i in range(1_000):
                yield i
        finally:
            events.append("servicer closed")

    handler = _KINDS[kind]._replace(**{kind: servicer})
    handler = wrapped(wrapped(handler, _layer(events, "-inner")), _layer(events, "-outer"))

    async def cancel_while_writing() -> None:
        context = _Context(writable=asyncio.Event())  # the caller never reads
        call = asyncio.ensure_future(getattr(handler, kind)("req", context))
        await asyncio.sleep(0.05)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

    asyncio.run(cancel_while_writing())
    assert events == [
        ("enter-outer", "req"),
        ("enter-inner", "req"),
        "servicer closed",
        ("exit-inner", "CancelledError"),
        ("exit-outer", "CancelledError"),
    ]
