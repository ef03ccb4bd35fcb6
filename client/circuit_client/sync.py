"""Blocking client.

    with CircuitClient("localhost:50051") as client:
        print(client.generate("The capital of France is", Sampling(max_new_tokens=8, temperature=0)).text)
        for chunk in client.stream("Once upon a time"):
            print(chunk.text, end="", flush=True)
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from circuit_client import _convert
from circuit_client._channel import DEFAULT_TIMEOUT_S, channel_options, health_messages
from circuit_proto.v1 import generation_pb2 as pb
from circuit_proto.v1 import generation_pb2_grpc as pb_grpc
from circuit_client.monitor import Monitoring
from circuit_client.credentials import Credentials, open_channel
from circuit_client.errors import CircuitRpcError
from circuit_client.types import Generation, ModelInfo, Sampling, StreamChunk, Tokenization


class CircuitClient:
    """`timeout` is each call's deadline in seconds (None: none); UNAVAILABLE is retried `retries` times."""

    def __init__(self, target: str, *, timeout: float | None = DEFAULT_TIMEOUT_S, retries: int = 3,
                 credentials: Credentials | None = None) -> None:
        self.target = target
        self.timeout = timeout
        self.channel = open_channel(target, channel_options(retries), credentials, aio=False)
        self._generation = pb_grpc.GenerationStub(self.channel)

    def __enter__(self) -> CircuitClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _deadline(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    def generate(
        self,
        prompt: str | None = None,
        sampling: Sampling | None = None,
        *,
        prompt_token_ids: list[int] | tuple[int, ...] | None = None,
        messages: _convert.Messages | None = None,
        monitor: bool | Monitoring = False,
        timeout: float | None = None,
    ) -> Generation:
        req = _convert.generate_request(prompt, prompt_token_ids, sampling or Sampling(), monitor, messages)
        try:
            return _convert.generation(self._generation.Generate(req, timeout=self._deadline(timeout)))
        except grpc.RpcError as err:
            raise CircuitRpcError.from_rpc_error(err) from None

    def stream(
        self,
        prompt: str | None = None,
        sampling: Sampling | None = None,
        *,
        prompt_token_ids: list[int] | tuple[int, ...] | None = None,
        messages: _convert.Messages | None = None,
        monitor: bool | Monitoring = False,
        timeout: float | None = None,
    ) -> Iterator[StreamChunk]:
        """Chunks as they are generated; stopping early (break, close) cancels the call on the server."""
        req = _convert.generate_request(prompt, prompt_token_ids, sampling or Sampling(), monitor, messages)
        call = self._generation.GenerateStream(req, timeout=self._deadline(timeout))
        try:
            for msg in call:
                yield _convert.stream_chunk(msg)
        except grpc.RpcError as err:
            raise CircuitRpcError.from_rpc_error(err) from None
        finally:
            call.cancel()

    def tokenize(self, text: str = "", *, add_special_tokens: bool = True, messages: _convert.Messages | None = None,
                 timeout: float | None = None) -> Tokenization:
        """Token ids of `text`, or of chat `messages` rendered with the model's chat template."""
        req = pb.TokenizeRequest(text=text, add_special_tokens=add_special_tokens,
                                 messages=_convert.chat_messages(messages))
        try:
            return _convert.tokenization(self._generation.Tokenize(req, timeout=self._deadline(timeout)))
        except grpc.RpcError as err:
            raise CircuitRpcError.from_rpc_error(err) from None

    def model_info(self, *, timeout: float | None = None) -> ModelInfo:
        try:
            return _convert.model_info(self._generation.ModelInfo(pb.ModelInfoRequest(), timeout=self._deadline(timeout)))
        except grpc.RpcError as err:
            raise CircuitRpcError.from_rpc_error(err) from None

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """"SERVING", "NOT_SERVING", ... for `service` ("" = the whole server)."""
        health_pb2 = health_messages()
        check = self.channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        try:
            resp = check(health_pb2.HealthCheckRequest(service=service), timeout=self._deadline(timeout))
        except grpc.RpcError as err:
            raise CircuitRpcError.from_rpc_error(err) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
