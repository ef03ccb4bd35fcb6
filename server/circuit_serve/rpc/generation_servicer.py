"""circuit.v1.Generation: convert, await the generation engine, convert back."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc

from circuit_client._pb.circuit.v1 import generation_pb2 as pb
from circuit_client._pb.circuit.v1 import generation_pb2_grpc as pb_grpc
from circuit_serve import __version__
from circuit_serve.features.service import FeaturesService
from circuit_serve.generation.engine import GenerationEngine
from circuit_serve.rpc import convert_generation as convert
from circuit_serve.rpc.convert_features import monitor_report_to_pb

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Generation"].full_name


class GenerationServicer(pb_grpc.GenerationServicer):
    def __init__(self, engine: GenerationEngine, features: FeaturesService | None = None,
                 transcoders: Callable[[], dict | None] = lambda: None) -> None:
        self._engine = engine
        self._features = features
        self._transcoders = transcoders  # the loaded set's description (None without transcoders)

    def _monitored(self, request: pb.GenerateRequest) -> bool:
        return self._features is not None and self._features.should_monitor(request.monitor)

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> pb.GenerateResponse:
        if self._monitored(request):
            result, report = await self._features.generate(self._engine, convert.request_from_pb(request))
            response = convert.result_to_pb(result)
            response.monitor.CopyFrom(monitor_report_to_pb(report))
            return response
        result = await self._engine.generate(convert.request_from_pb(request))
        return convert.result_to_pb(result)

    async def GenerateStream(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateStreamResponse]:
        if self._monitored(request):
            async for item in self._features.stream(self._engine, convert.request_from_pb(request)):
                messages = convert.chunk_to_pb(item.chunk)
                if item.report is not None:
                    messages[-1].end.monitor.CopyFrom(monitor_report_to_pb(item.report))
                for message in messages:
                    yield message
            return
        async for chunk in self._engine.stream(convert.request_from_pb(request)):
            for message in convert.chunk_to_pb(chunk):
                yield message

    async def Tokenize(self, request: pb.TokenizeRequest, context: grpc.aio.ServicerContext) -> pb.TokenizeResponse:
        messages = convert.messages_from_pb(request.messages)
        if messages:
            ids, tokens = self._engine.tokenize_chat(messages)
            return pb.TokenizeResponse(token_ids=ids, tokens=tokens)
        add_special = request.add_special_tokens if request.HasField("add_special_tokens") else True
        ids, tokens = self._engine.tokenize(request.text, add_special_tokens=add_special)
        return pb.TokenizeResponse(token_ids=ids, tokens=tokens)

    async def ModelInfo(self, request: pb.ModelInfoRequest, context: grpc.aio.ServicerContext) -> pb.ModelInfoResponse:
        return convert.model_info_to_pb(self._engine.describe(), server_version=__version__,
                                        transcoders=self._transcoders())


def add_to_server(engine: GenerationEngine, server: grpc.aio.Server, features: FeaturesService | None = None,
                  transcoders: Callable[[], dict | None] = lambda: None) -> str:
    """Register the servicer; return its full service name (for health and reflection)."""
    pb_grpc.add_GenerationServicer_to_server(GenerationServicer(engine, features, transcoders), server)
    return SERVICE_NAME
