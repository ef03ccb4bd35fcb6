"""circuit.v1.Attribution: convert, stream the attribution service's events, convert back.

Results are framed as wire bytes around the stored sections (result_wire.py) and sent as
they are: the handlers' serializer passes bytes through and serializes messages. Domain
errors propagate to the server interceptor, which maps them to status codes.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from circuit_proto.v1 import attribution_pb2 as pb
from circuit_proto.v1 import attribution_pb2_grpc as pb_grpc
from circuit_serve.attribution.service import AttributionService
from circuit_serve.attribution.types import Accepted
from circuit_serve.auth.principal import current_caller
from circuit_serve.jobs.events import Finished
from circuit_serve.rpc import convert_attribution as convert
from circuit_serve.rpc import result_wire

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Attribution"].full_name
# Give up this long before the caller's deadline, so it hears DEADLINE_EXCEEDED from us.
_DEADLINE_MARGIN_S = 0.05


class AttributionServicer(pb_grpc.AttributionServicer):
    def __init__(self, service: AttributionService) -> None:
        self._service = service
        self._chunk_bytes = service.config.result_chunk_bytes

    async def Attribute(
        self, request: pb.AttributeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.AttributeResponse | bytes]:
        remaining = context.time_remaining()
        timeout_s = None if remaining is None else max(remaining - _DEADLINE_MARGIN_S, 0.001)
        key = ""
        events = self._service.attribute(convert.request_from_pb(request), timeout_s=timeout_s, caller=current_caller())
        async with contextlib.aclosing(events):
            async for event in events:
                if isinstance(event, Accepted):
                    key = event.key
                if isinstance(event, Finished):
                    parts = result_wire.result_parts(event.sections, event.source, request.output)
                    for message in result_wire.result_messages(key, parts, self._chunk_bytes):
                        yield message
                else:
                    yield convert.event_to_pb(event, key)

    async def GetGraph(self, request: pb.GetGraphRequest, context: grpc.aio.ServicerContext) -> bytes:
        sections = await self._service.get_graph(request.key, caller=current_caller())
        return result_wire.get_graph_response(result_wire.result_bytes(sections, "cache", request.output))

    async def GetGraphStream(
        self, request: pb.GetGraphRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        sections = await self._service.get_graph(request.key, caller=current_caller())
        parts = result_wire.result_parts(sections, "cache", request.output)
        for message in result_wire.result_messages(request.key, parts, self._chunk_bytes):
            yield message

    async def GetJob(self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext) -> pb.JobStatus:
        return convert.job_to_pb(await self._service.get_job(request.key, caller=current_caller()))

    async def WatchJob(
        self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.JobStatus]:
        statuses = self._service.watch_job(request.key, caller=current_caller())
        async with contextlib.aclosing(statuses):
            async for status in statuses:
                yield convert.job_to_pb(status)

    async def CancelJob(self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext) -> pb.CancelJobResponse:
        return convert.cancel_to_pb(await self._service.cancel_job(request.key, caller=current_caller()))


def _serialize(message: Any) -> bytes:
    """Responses already framed as bytes go out as they are; messages are serialized."""
    return message if isinstance(message, bytes) else message.SerializeToString()


def add_to_server(service: AttributionService, server: grpc.aio.Server) -> str:
    """Register the servicer (as the generated `add_AttributionServicer_to_server` does, with a
    serializer that passes pre-framed bytes through); return its full service name."""
    servicer = AttributionServicer(service)
    handlers = {
        "Attribute": grpc.unary_stream_rpc_method_handler(
            servicer.Attribute, request_deserializer=pb.AttributeRequest.FromString, response_serializer=_serialize
        ),
        "GetGraph": grpc.unary_unary_rpc_method_handler(
            servicer.GetGraph, request_deserializer=pb.GetGraphRequest.FromString, response_serializer=_serialize
        ),
        "GetGraphStream": grpc.unary_stream_rpc_method_handler(
            servicer.GetGraphStream, request_deserializer=pb.GetGraphRequest.FromString, response_serializer=_serialize
        ),
        "GetJob": grpc.unary_unary_rpc_method_handler(
            servicer.GetJob, request_deserializer=pb.GetJobRequest.FromString, response_serializer=_serialize
        ),
        "WatchJob": grpc.unary_stream_rpc_method_handler(
            servicer.WatchJob, request_deserializer=pb.GetJobRequest.FromString, response_serializer=_serialize
        ),
        "CancelJob": grpc.unary_unary_rpc_method_handler(
            servicer.CancelJob, request_deserializer=pb.GetJobRequest.FromString, response_serializer=_serialize
        ),
    }
    missing = set(pb.DESCRIPTOR.services_by_name["Attribution"].methods_by_name) - set(handlers)
    if missing:
        raise RuntimeError(f"Attribution methods without a handler: {sorted(missing)}")
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
    return SERVICE_NAME
