"""The calls of circuit.v1.Generation (and the health check), written once for both clients.

`CircuitClient` (sync.py) and `AsyncCircuitClient` (aio.py) are `GenerationCalls` on the
blocking and on the asyncio driver (`_calls.py` says how).
"""

from __future__ import annotations

from collections.abc import Sequence

from circuit_client import _convert
from circuit_client._calls import Answer, Each, Items, Stream, Unary
from circuit_client._channel import DEFAULT_TIMEOUT_S, health_messages, health_stub
from circuit_client.credentials import Credentials
from circuit_client.interventions import Intervention
from circuit_client.monitor import Monitoring
from circuit_client.types import Generation, ModelInfo, Sampling, StreamChunk, Tokenization
from circuit_proto.v1 import generation_pb2 as pb
from circuit_proto.v1 import generation_pb2_grpc as pb_grpc


def _tokenize_request(text: str, add_special_tokens: bool, messages: _convert.Messages | None) -> pb.TokenizeRequest:
    return pb.TokenizeRequest(
        text=text, add_special_tokens=add_special_tokens, messages=_convert.chat_messages(messages)
    )


GENERATE = Unary(pb_grpc.GenerationStub, "Generate", _convert.generate_request, lambda _, msg: _convert.generation(msg))
GENERATE_STREAM = Stream(
    pb_grpc.GenerationStub, "GenerateStream", _convert.generate_request, lambda _: Each(_convert.stream_chunk)
)
TOKENIZE = Unary(pb_grpc.GenerationStub, "Tokenize", _tokenize_request, lambda _, msg: _convert.tokenization(msg))
MODEL_INFO = Unary(pb_grpc.GenerationStub, "ModelInfo", pb.ModelInfoRequest, lambda _, msg: _convert.model_info(msg))
HEALTH = Unary(
    health_stub,
    "Check",
    lambda service: health_messages().HealthCheckRequest(service=service),
    lambda _, msg: health_messages().HealthCheckResponse.ServingStatus.Name(msg.status),
)


class GenerationCalls:
    """`timeout` is each call's deadline in seconds (None: none); UNAVAILABLE is retried `retries` times."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        retries: int = 3,
        credentials: Credentials | None = None,
    ) -> None:
        super().__init__(target, timeout=timeout, retries=retries, credentials=credentials)  # the driver's
        self.target = target

    def generate(
        self,
        prompt: str | None = None,
        sampling: Sampling | None = None,
        *,
        prompt_token_ids: list[int] | tuple[int, ...] | None = None,
        messages: _convert.Messages | None = None,
        monitor: bool | Monitoring = False,
        interventions: Sequence[Intervention] = (),
        steering_preset: str = "",
        skip_default_steering: bool = False,
        timeout: float | None = None,
    ) -> Answer[Generation]:
        """The whole completion; `interventions` (after those of the server preset `steering_preset`,
        and of the server's default preset unless `skip_default_steering`, which needs the steer
        scope) steer it inside the server's vLLM forward pass."""
        return self._unary(
            GENERATE,
            prompt,
            prompt_token_ids,
            sampling or Sampling(),
            monitor,
            messages,
            interventions,
            steering_preset,
            skip_default_steering,
            timeout=timeout,
        )

    def stream(
        self,
        prompt: str | None = None,
        sampling: Sampling | None = None,
        *,
        prompt_token_ids: list[int] | tuple[int, ...] | None = None,
        messages: _convert.Messages | None = None,
        monitor: bool | Monitoring = False,
        interventions: Sequence[Intervention] = (),
        steering_preset: str = "",
        skip_default_steering: bool = False,
        timeout: float | None = None,
    ) -> Items[StreamChunk]:
        """Chunks as they are generated; leaving early (break, close/aclose, cancel) cancels the call on the server."""
        return self._stream(
            GENERATE_STREAM,
            prompt,
            prompt_token_ids,
            sampling or Sampling(),
            monitor,
            messages,
            interventions,
            steering_preset,
            skip_default_steering,
            timeout=timeout,
        )

    def tokenize(
        self,
        text: str = "",
        *,
        add_special_tokens: bool = True,
        messages: _convert.Messages | None = None,
        timeout: float | None = None,
    ) -> Answer[Tokenization]:
        """Token ids of `text`, or of chat `messages` rendered with the model's chat template."""
        return self._unary(TOKENIZE, text, add_special_tokens, messages, timeout=timeout)

    def model_info(self, *, timeout: float | None = None) -> Answer[ModelInfo]:
        return self._unary(MODEL_INFO, timeout=timeout)

    def health(self, service: str = "", *, timeout: float | None = None) -> Answer[str]:
        """ "SERVING", "NOT_SERVING", ... for `service` ("" = the whole server)."""
        return self._unary(HEALTH, service, timeout=timeout)
