"""The client against a scripted in-process server: retries, deadlines, conversion, cancel."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent import futures

import grpc
import pytest

from circuit_client import (
    AsyncCircuitClient,
    CircuitClient,
    CircuitRpcError,
    FinishReason,
    Generation,
    Sampling,
    StreamChunk,
    Usage,
)
from circuit_proto.v1 import generation_pb2 as pb
from circuit_proto.v1 import generation_pb2_grpc as pb_grpc


class Scripted(pb_grpc.GenerationServicer):
    """Generate fails UNAVAILABLE twice, then answers; Tokenize always fails INTERNAL."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.last_request: pb.GenerateRequest | None = None
        self.stream_cancelled = threading.Event()

    def _count(self, name: str) -> int:
        self.calls[name] = self.calls.get(name, 0) + 1
        return self.calls[name]

    def Generate(self, request, context):
        self.last_request = request
        if self._count("Generate") <= 2:
            context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        return pb.GenerateResponse(
            request_id="gen-1",
            text="hi there",
            token_ids=[5, 6],
            finish_reason=pb.FINISH_REASON_LENGTH,
            usage=pb.Usage(prompt_tokens=3, completion_tokens=2),
        )

    def Tokenize(self, request, context):
        self._count("Tokenize")
        context.abort(grpc.StatusCode.INTERNAL, "boom")

    def ModelInfo(self, request, context):
        time.sleep(2)
        return pb.ModelInfoResponse()

    def GenerateStream(self, request, context):
        context.add_callback(self.stream_cancelled.set)
        for i in range(1000):
            yield pb.GenerateStreamResponse(request_id="gen-2", delta=pb.TokenDelta(text=f"t{i}", token_ids=[i]))
            time.sleep(0.01)
        yield pb.GenerateStreamResponse(
            request_id="gen-2",
            end=pb.GenerationEnd(
                finish_reason=pb.FINISH_REASON_STOP, usage=pb.Usage(prompt_tokens=1, completion_tokens=1000)
            ),
        )


@pytest.fixture
def scripted():
    servicer = Scripted()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_GenerationServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(None)


def test_retries_unavailable_and_converts(scripted):
    servicer, target = scripted
    with CircuitClient(target, timeout=10, retries=3) as client:
        result = client.generate("hello", Sampling(max_new_tokens=2, temperature=0.0, stop=("x",), top_logprobs=1))
    assert servicer.calls["Generate"] == 3
    assert result == Generation(
        request_id="gen-1", text="hi there", token_ids=(5, 6), finish_reason=FinishReason.LENGTH, usage=Usage(3, 2)
    )
    req = servicer.last_request
    assert req.prompt == "hello" and req.sampling.max_new_tokens == 2 and req.sampling.HasField("temperature")
    assert not req.sampling.HasField("top_p") and list(req.sampling.stop) == ["x"] and req.top_logprobs == 1


def test_no_retries_means_one_attempt(scripted):
    servicer, target = scripted
    with CircuitClient(target, retries=0) as client, pytest.raises(CircuitRpcError) as info:
        client.generate("hello")
    assert info.value.code == grpc.StatusCode.UNAVAILABLE and servicer.calls["Generate"] == 1


def test_other_errors_are_not_retried(scripted):
    servicer, target = scripted
    with CircuitClient(target, retries=3) as client, pytest.raises(CircuitRpcError) as info:
        client.tokenize("x")
    assert info.value.code == grpc.StatusCode.INTERNAL and info.value.details == "boom"
    assert servicer.calls["Tokenize"] == 1


def test_deadline(scripted):
    _, target = scripted
    with CircuitClient(target, timeout=30) as client, pytest.raises(CircuitRpcError) as info:
        client.model_info(timeout=0.2)
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_leaving_a_stream_cancels_it(scripted):
    servicer, target = scripted
    with CircuitClient(target) as client:
        stream = client.stream("x")
        first = next(stream)
        assert first == StreamChunk(request_id="gen-2", text="t0", token_ids=(0,))
        stream.close()
    assert servicer.stream_cancelled.wait(5)


def test_async_client_stream_and_cancel(scripted):
    servicer, target = scripted

    async def main():
        async with AsyncCircuitClient(target, retries=3) as client:
            got = []
            async for chunk in client.stream("x"):
                got.append(chunk.text)
                if len(got) == 3:
                    break
            result = await client.generate("again")
            return got, result

    got, result = asyncio.run(main())
    assert got == ["t0", "t1", "t2"] and result.text == "hi there"
    assert servicer.stream_cancelled.wait(5)
