"""The last-resort error path and the bounded executor, on a real in-process gRPC server."""

from __future__ import annotations

import asyncio
import logging
import re
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2

from circuit_serve.domain.errors import CapacityExceeded
from circuit_serve.jobs.executor import BoundedExecutor
from circuit_serve.metrics import new_registry
from circuit_serve.metrics.rpc import RpcMetrics
from circuit_serve.rpc.interceptors import ServingInterceptor

SECRET = "password=hunter2 at /very/private/path"


class _Broken(grpc.GenericRpcHandler):
    """A service whose one method fails with an exception nobody expected."""

    def service(self, details):
        if details.method != "/test.Broken/Fail":
            return None

        async def fail(request, context):
            raise RuntimeError(SECRET)

        return grpc.unary_unary_rpc_method_handler(
            fail,
            request_deserializer=health_pb2.HealthCheckRequest.FromString,
            response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
        )


def test_internal_error_carries_an_id_that_is_in_the_log_and_never_the_exception_text(caplog):
    async def go():
        server = grpc.aio.server(interceptors=[ServingInterceptor(RpcMetrics(new_registry()))])
        server.add_generic_rpc_handlers([_Broken()])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                method = ch.unary_unary(
                    "/test.Broken/Fail",
                    request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                    response_deserializer=health_pb2.HealthCheckResponse.FromString,
                )
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await method(health_pb2.HealthCheckRequest(), timeout=10)
                return info.value
        finally:
            await server.stop(0)

    with caplog.at_level(logging.ERROR, logger="circuit_serve.rpc.interceptors"):
        err = asyncio.run(go())
    assert err.code() == grpc.StatusCode.INTERNAL
    assert "hunter2" not in err.details() and "RuntimeError" not in err.details()
    error_id = re.search(r"error id ([0-9a-f]{16})", err.details()).group(1)
    logged = [r for r in caplog.records if error_id in r.getMessage()]
    assert logged and SECRET in logged[0].exc_text  # the operator finds the cause by the id


def test_bounded_executor_refuses_beyond_its_queue():
    gate = threading.Event()
    pool = BoundedExecutor(2, 3)
    try:
        running = [pool.submit(gate.wait, 30) for _ in range(5)]  # 2 running + 3 waiting
        with pytest.raises(CapacityExceeded, match="2 running, 3 waiting"):
            pool.submit(gate.wait, 30)
        gate.set()
        assert all(f.result(30) for f in running)
        assert pool.pending == 0
        assert pool.submit(lambda: 7).result(10) == 7  # room again
    finally:
        gate.set()
        pool.shutdown()


def test_to_thread_on_a_full_executor_raises_capacity_exceeded():
    async def go():
        gate = threading.Event()
        loop = asyncio.get_running_loop()
        loop.set_default_executor(BoundedExecutor(1, 1))
        held = [asyncio.ensure_future(asyncio.to_thread(gate.wait, 30)) for _ in range(2)]
        await asyncio.sleep(0.05)
        try:
            with pytest.raises(CapacityExceeded):
                await asyncio.to_thread(lambda: None)
        finally:
            gate.set()
        await asyncio.gather(*held)
        return await asyncio.to_thread(lambda: "ok")

    assert asyncio.run(go()) == "ok"
