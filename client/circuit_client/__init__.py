"""circuit-serve's Python client: typed results, deadlines, retries on UNAVAILABLE.

Needs only grpcio and protobuf (health checks also need grpcio-health-checking).
"""

from circuit_client.aio import AsyncCircuitClient
from circuit_client.credentials import Credentials
from circuit_client.errors import CircuitRpcError
from circuit_client.features import AsyncFeaturesClient, FeaturesClient
from circuit_client.monitor import Monitoring, MonitorReport, WatchedValues, WatchRule
from circuit_client.sync import CircuitClient
from circuit_client.types import (
    ChatMessage,
    FinishReason,
    Generation,
    ModelInfo,
    Sampling,
    StreamChunk,
    Tokenization,
    TokenLogprob,
    TopLogprob,
    TranscoderSet,
    Usage,
)

__all__ = [
    "AsyncCircuitClient",
    "AsyncFeaturesClient",
    "ChatMessage",
    "CircuitClient",
    "CircuitRpcError",
    "Credentials",
    "FeaturesClient",
    "FinishReason",
    "Generation",
    "ModelInfo",
    "MonitorReport",
    "Monitoring",
    "Sampling",
    "StreamChunk",
    "Tokenization",
    "TokenLogprob",
    "TopLogprob",
    "TranscoderSet",
    "Usage",
    "WatchRule",
    "WatchedValues",
]
