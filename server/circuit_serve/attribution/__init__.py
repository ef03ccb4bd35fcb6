"""The attribution service: engine behind a cache, dedup, admission queue and audit-by-request."""

from circuit_serve.attribution.build import build_service
from circuit_serve.attribution.service import AttributionService
from circuit_serve.attribution.types import Accepted, AttributeRequest, AttributionInput, GraphEngine

__all__ = ["Accepted", "AttributeRequest", "AttributionInput", "AttributionService", "GraphEngine", "build_service"]
