"""circuit.v1.Generation: convert, await the generation engine, convert back."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable

import grpc

from circuit_proto.v1 import generation_pb2 as pb
from circuit_proto.v1 import generation_pb2_grpc as pb_grpc
from circuit_serve import __version__
from circuit_serve.auth.principal import current_caller
from circuit_serve.domain.errors import NotConfigured
from circuit_serve.domain.generation import GenerationRequest
from circuit_serve.features.presets import SteeringPresets
from circuit_serve.features.service import FeaturesService
from circuit_serve.generation.engine import GenerationEngine
from circuit_serve.rpc import convert_generation as convert

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Generation"].full_name


class GenerationServicer(pb_grpc.GenerationServicer):
    def __init__(
        self,
        engine: GenerationEngine,
        features: FeaturesService | None = None,
        limits: Callable[[], dict[str, float]] | None = None,
        transcoders: Callable[[], dict | None] = lambda: None,
    ) -> None:
        self._engine = engine
        self._features = features
        self._limits = limits
        self._transcoders = transcoders  # the loaded set's description (None without transcoders)

    def _request(self, request: pb.GenerateRequest) -> GenerationRequest:
        req = convert.request_from_pb(request)
        ask = convert.monitor_ask(request)
        if self._features is not None:
            req = dataclasses.replace(req, watch=self._features.resolve(ask))
            return self._features.presets.apply(req, current_caller())
        if ask.any:
            raise NotConfigured("monitoring is not enabled on this server")
        return SteeringPresets().apply(req, current_caller())  # a named preset: INVALID_ARGUMENT

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> pb.GenerateResponse:
        result = await self._engine.generate(self._request(request))
        return convert.result_to_pb(result)

    async def GenerateStream(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateStreamResponse]:
        # closed with this stream: a cancel that lands while a message is written aborts the
        # request in vLLM at once, not when the garbage collector reaches the engine's stream
        async with contextlib.aclosing(self._engine.stream(self._request(request))) as chunks:
            async for chunk in chunks:
                for message in convert.chunk_to_pb(chunk):
                    yield message

    async def Tokenize(self, request: pb.TokenizeRequest, context: grpc.aio.ServicerContext) -> pb.TokenizeResponse:
        messages = convert.messages_from_pb(request.messages)
        if messages:
            ids, tokens = self._engine.tokenize_chat(messages)
            return pb.TokenizeResponse(token_ids=ids, tokens=tokens)
        add_special = request.add_special_tokens if request.HasField("add_special_tokens") else True
        ids, tokens = await self._engine.tokenize_text(request.text, add_special_tokens=add_special)
        return pb.TokenizeResponse(token_ids=ids, tokens=tokens)

    async def ModelInfo(self, request: pb.ModelInfoRequest, context: grpc.aio.ServicerContext) -> pb.ModelInfoResponse:
        info = convert.model_info_to_pb(
            self._engine.describe(), server_version=__version__, transcoders=self._transcoders()
        )
        if self._limits is not None:
            info.limits.CopyFrom(pb.Limits(**self._limits()))
        if self._features is not None:
            convert.presets_to_pb(self._features.presets, info)
        return info


def add_to_server(
    engine: GenerationEngine,
    server: grpc.aio.Server,
    features: FeaturesService | None = None,
    *,
    limits: Callable[[], dict[str, float]] | None = None,
    transcoders: Callable[[], dict | None] = lambda: None,
) -> str:
    """Register the servicer; return its full service name (for health and reflection)."""
    pb_grpc.add_GenerationServicer_to_server(GenerationServicer(engine, features, limits, transcoders), server)
    return SERVICE_NAME
