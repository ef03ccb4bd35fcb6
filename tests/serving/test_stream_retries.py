"""Streams retried by the client before their first message: UNAVAILABLE is retried within the
call's deadline, a stream that has sent a message is not, and a server that shuts down under a
stream that has sent nothing ends the call (grpcio 1.85's own retry of it never ended)."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent import futures

import grpc
import pytest

from circuit_client import AsyncCircuitClient, CircuitClient, CircuitRpcError
from circuit_proto.v1 import generation_pb2 as pb
from circuit_proto.v1 import generation_pb2_grpc as pb_grpc


def _chunk(i: int) -> pb.GenerateStreamResponse:
    return pb.GenerateStreamResponse(request_id="gen-1", delta=pb.TokenDelta(text=f"t{i}", token_ids=[i]))


def _end() -> pb.GenerateStreamResponse:
    return pb.GenerateStreamResponse(
        request_id="gen-1",
        end=pb.GenerationEnd(
            finish_reason=pb.FINISH_REASON_LENGTH, usage=pb.Usage(prompt_tokens=1, completion_tokens=2)
        ),
    )


class Flaky(pb_grpc.GenerationServicer):
    """GenerateStream: the first `fail_before` attempts end UNAVAILABLE before any message; with
    `fail_after`, every attempt sends one chunk and then ends UNAVAILABLE; `hold` keeps an attempt
    open without a message until the server stops."""

    def __init__(self, *, fail_before: int = 0, fail_after: bool = False, hold: bool = False) -> None:
        self.fail_before, self.fail_after, self.hold = fail_before, fail_after, hold
        self.attempts = 0
        self.held = threading.Event()

    def GenerateStream(self, request, context):
        self.attempts += 1
        if self.hold:
            self.held.set()
            while context.is_active():
                time.sleep(0.01)
            return
        if self.attempts <= self.fail_before:
            context.abort(grpc.StatusCode.UNAVAILABLE, "engine restarting")
        yield _chunk(0)
        if self.fail_after:
            context.abort(grpc.StatusCode.UNAVAILABLE, "engine died mid-stream")
        yield _chunk(1)
        yield _end()


@pytest.fixture
def serve():
    servers = []

    def start(servicer: Flaky) -> tuple[grpc.Server, str]:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        pb_grpc.add_GenerationServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return server, f"127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(None)


def blocking_texts(target: str, **client_args) -> list[str]:
    with CircuitClient(target, **client_args) as client:
        return [chunk.text for chunk in client.stream("x")]


def async_texts(target: str, **client_args) -> list[str]:
    async def main() -> list[str]:
        async with AsyncCircuitClient(target, **client_args) as client:
            return [chunk.text async for chunk in client.stream("x")]

    return asyncio.run(main())


@pytest.mark.parametrize("texts", [blocking_texts, async_texts], ids=["blocking", "asyncio"])
def test_unavailable_before_the_first_message_is_retried(serve, texts):
    servicer = Flaky(fail_before=2)
    _, target = serve(servicer)
    assert texts(target, retries=3, timeout=10) == ["t0", "t1", ""]
    assert servicer.attempts == 3


@pytest.mark.parametrize("texts", [blocking_texts, async_texts], ids=["blocking", "asyncio"])
def test_retries_run_out(serve, texts):
    servicer = Flaky(fail_before=10)
    _, target = serve(servicer)
    with pytest.raises(CircuitRpcError) as err:
        texts(target, retries=2, timeout=10)
    assert err.value.code == grpc.StatusCode.UNAVAILABLE and err.value.details == "engine restarting"
    assert servicer.attempts == 3
    servicer.attempts = 0
    with pytest.raises(CircuitRpcError):
        texts(target, retries=0, timeout=10)
    assert servicer.attempts == 1


@pytest.mark.parametrize("texts", [blocking_texts, async_texts], ids=["blocking", "asyncio"])
def test_a_stream_that_sent_a_message_is_not_retried(serve, texts):
    servicer = Flaky(fail_after=True)
    _, target = serve(servicer)
    with pytest.raises(CircuitRpcError) as err:
        texts(target, retries=3, timeout=10)
    assert err.value.code == grpc.StatusCode.UNAVAILABLE and servicer.attempts == 1


@pytest.mark.parametrize("texts", [blocking_texts, async_texts], ids=["blocking", "asyncio"])
def test_a_server_shutting_down_under_a_silent_stream_ends_the_call(serve, texts):
    servicer = Flaky(hold=True)
    server, target = serve(servicer)
    threading.Thread(target=lambda: servicer.held.wait(10) and server.stop(0.5), daemon=True).start()
    ended: dict[str, object] = {}

    def call() -> None:
        try:
            texts(target, retries=3, timeout=8)
        except CircuitRpcError as err:
            ended["code"] = err.code

    start = time.monotonic()
    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    caller.join(15)
    assert not caller.is_alive(), "the stream outlived its deadline"
    # retried once the server stopped: the port refuses connections (UNAVAILABLE) until retries run out
    assert ended["code"] in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert time.monotonic() - start < 9.0
