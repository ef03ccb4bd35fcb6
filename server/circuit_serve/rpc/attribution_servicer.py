"""circuit.v1.Attribution: convert, stream the attribution service's events, convert back.

Domain errors propagate to the server interceptor, which maps them to status codes.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from circuit_client._pb.circuit.v1 import attribution_pb2 as pb
from circuit_client._pb.circuit.v1 import attribution_pb2_grpc as pb_grpc
from circuit_serve.attribution.service import AttributionService
from circuit_serve.attribution.types import Accepted
from circuit_serve.auth.principal import current_caller
from circuit_serve.rpc import convert_attribution as convert

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Attribution"].full_name
# Give up this long before the caller's deadline, so it hears DEADLINE_EXCEEDED from us.
_DEADLINE_MARGIN_S = 0.05


class AttributionServicer(pb_grpc.AttributionServicer):
    def __init__(self, service: AttributionService) -> None:
        self._service = service

    async def Attribute(
        self, request: pb.AttributeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.AttributeResponse]:
        remaining = context.time_remaining()
        timeout_s = None if remaining is None else max(remaining - _DEADLINE_MARGIN_S, 0.001)
        key = ""
        events = self._service.attribute(convert.request_from_pb(request), timeout_s=timeout_s, caller=current_caller())
        async with contextlib.aclosing(events):
            async for event in events:
                if isinstance(event, Accepted):
                    key = event.key
                yield convert.event_to_pb(event, key, request.output)

    async def GetGraph(self, request: pb.GetGraphRequest, context: grpc.aio.ServicerContext) -> pb.GetGraphResponse:
        sections = await self._service.get_graph(request.key, caller=current_caller())
        return pb.GetGraphResponse(result=convert.result_to_pb(sections, "cache", request.output))


def add_to_server(service: AttributionService, server: grpc.aio.Server) -> str:
    """Register the servicer; return its full service name (for health and reflection)."""
    pb_grpc.add_AttributionServicer_to_server(AttributionServicer(service), server)
    return SERVICE_NAME
