"""Client of circuit.v1.Features: feature activations on any text, and steering.

    from circuit_client import CircuitClient
    from circuit_client.features import FeaturesClient, Intervention

    with CircuitClient("localhost:50051") as client:
        features = FeaturesClient(client)
        for pos in features.activations("The capital of France is", top_k=5):
            print(pos.position, pos.token, [(v.layer, v.index, v.activation) for v in pos.values])
        result = features.steer("The capital of France is", [Intervention(2, 17, "set", 0.0, positions=(5,))],
                                include_default=True)
        print(result.default.text, "->", result.steered.text)

`AsyncFeaturesClient` is its asyncio twin (`await features.activations(...)`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from circuit_client._calls import Answer, Unary
from circuit_client._channel import DEFAULT_TIMEOUT_S, AsyncServiceClient, ServiceClient
from circuit_client._convert import Messages, chat_messages
from circuit_client.credentials import Credentials
from circuit_client.interventions import Intervention as Intervention  # re-exported: callers name it here
from circuit_client.interventions import interventions_pb
from circuit_proto.v1 import features_pb2 as pb
from circuit_proto.v1 import features_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class FeatureValue:
    layer: int
    index: int
    activation: float
    label: str = ""


@dataclass(frozen=True)
class PositionActivations:
    position: int
    token_id: int
    token: str
    values: tuple[FeatureValue, ...]


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: tuple[int, ...]


@dataclass(frozen=True)
class SteerResult:
    prompt_token_ids: tuple[int, ...]
    steered: Completion
    default: Completion | None


class FeaturesCalls:
    """The calls of circuit.v1.Features, written once for both clients (`_calls.py`)."""

    def __init__(
        self,
        target: Any,
        *,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        retries: int = 3,
        credentials: Credentials | None = None,
    ) -> None:
        super().__init__(target, timeout=timeout, retries=retries, credentials=credentials)  # the driver's

    def activations(
        self,
        prompt: str | None = None,
        *,
        prompt_token_ids: Sequence[int] | None = None,
        features: Sequence[tuple[int, int]] = (),
        top_k: int = 0,
        messages: Messages | None = None,
        timeout: float | None = None,
    ) -> Answer[list[PositionActivations]]:
        """Per position: the listed (layer, index) features' values, or the top_k active ones."""
        return self._unary(ACTIVATIONS, prompt, prompt_token_ids, features, top_k, messages, timeout=timeout)

    def steer(
        self,
        prompt: str | None,
        interventions: Sequence[Intervention],
        *,
        prompt_token_ids: Sequence[int] | None = None,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        top_p: float | None = None,
        seed: int | None = None,
        include_default: bool = False,
        messages: Messages | None = None,
        timeout: float | None = None,
    ) -> Answer[SteerResult]:
        """Generate with the interventions (greedy unless temperature > 0) and, with `include_default`,
        without them; served inside vLLM where the server can, else on the replacement model."""
        return self._unary(
            STEER,
            prompt,
            interventions,
            prompt_token_ids,
            max_new_tokens,
            temperature,
            top_p,
            seed,
            include_default,
            messages,
            timeout=timeout,
        )


class FeaturesClient(FeaturesCalls, ServiceClient):
    """`target` is host:port, a grpc.Channel, or a CircuitClient (its channel is shared)."""


class AsyncFeaturesClient(FeaturesCalls, AsyncServiceClient):
    """asyncio twin of `FeaturesClient`; `target` is host:port, a grpc.aio.Channel, or an
    AsyncCircuitClient (its channel is shared)."""


def _activations_request(prompt, prompt_token_ids, features, top_k, messages) -> pb.FeatureActivationsRequest:
    return pb.FeatureActivationsRequest(
        prompt=prompt or "",
        prompt_token_ids=list(prompt_token_ids or ()),
        top_k=top_k,
        messages=chat_messages(messages),
        features=[pb.FeatureRef(layer=layer, index=index) for layer, index in features],
    )


def _activations(msg: pb.FeatureActivationsResponse) -> list[PositionActivations]:
    return [
        PositionActivations(
            p.position,
            p.token_id,
            p.token,
            tuple(FeatureValue(v.layer, v.index, v.activation, v.label) for v in p.features),
        )
        for p in msg.positions
    ]


def _steer_request(
    prompt, interventions, prompt_token_ids, max_new_tokens, temperature, top_p, seed, include_default, messages
) -> pb.SteerRequest:
    req = pb.SteerRequest(
        prompt=prompt or "",
        prompt_token_ids=list(prompt_token_ids or ()),
        temperature=temperature,
        include_default=include_default,
        messages=chat_messages(messages),
        interventions=interventions_pb(interventions),
    )
    for name, value in (("max_new_tokens", max_new_tokens), ("top_p", top_p), ("seed", seed)):
        if value is not None:
            setattr(req, name, value)
    return req


def _steered(msg: pb.SteerResponse) -> SteerResult:
    default = msg.default
    return SteerResult(
        tuple(msg.prompt_token_ids),
        Completion(msg.steered.text, tuple(msg.steered.token_ids)),
        Completion(default.text, tuple(default.token_ids)) if msg.HasField("default") else None,
    )


ACTIVATIONS = Unary(pb_grpc.FeaturesStub, "FeatureActivations", _activations_request, lambda _, msg: _activations(msg))
STEER = Unary(pb_grpc.FeaturesStub, "Steer", _steer_request, lambda _, msg: _steered(msg))
