"""circuit.v1.Features: convert, await the features service, convert back."""

from __future__ import annotations

import grpc

from circuit_proto.v1 import features_pb2 as pb
from circuit_proto.v1 import features_pb2_grpc as pb_grpc
from circuit_serve.features.service import FeaturesService
from circuit_serve.rpc import convert_features as convert

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Features"].full_name


class FeaturesServicer(pb_grpc.FeaturesServicer):
    def __init__(self, service: FeaturesService) -> None:
        self._service = service

    async def FeatureActivations(
        self, request: pb.FeatureActivationsRequest, context: grpc.aio.ServicerContext
    ) -> pb.FeatureActivationsResponse:
        rows = await self._service.feature_activations(
            convert.tokens_input(request.prompt, request.prompt_token_ids, request.messages),
            features=convert.feature_refs(request.features),
            top_k=request.top_k,
        )
        return convert.activations_to_pb(rows)

    async def Steer(self, request: pb.SteerRequest, context: grpc.aio.ServicerContext) -> pb.SteerResponse:
        return convert.steer_to_pb(await self._service.steer(convert.steer_query(request)))


def add_to_server(service: FeaturesService, server: grpc.aio.Server) -> str:
    """Register the servicer; return its full service name (for health and reflection)."""
    pb_grpc.add_FeaturesServicer_to_server(FeaturesServicer(service), server)
    return SERVICE_NAME
