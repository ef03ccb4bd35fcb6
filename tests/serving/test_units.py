"""Server pieces that need no model: the error map, request checks, config parsing."""

from __future__ import annotations

import argparse
import asyncio

import grpc
import pytest

from circuit_proto.v1 import generation_pb2 as pb
from circuit_serve.config.limits import InputLimits
from circuit_serve.config.serve import ServeConfig
from circuit_serve.domain import errors
from circuit_serve.domain.generation import GenerationChunk, GenerationRequest, SamplingOptions
from circuit_serve.domain.generation_checks import Limits, check_prompt_length, check_request
from circuit_serve.rpc.generation_servicer import GenerationServicer
from circuit_serve.rpc.status import status_for

_FLAGS = InputLimits()  # the flags' defaults
LIMITS = Limits(
    vocab_size=100,
    max_model_len=64,
    max_new_tokens_limit=32,
    max_top_logprobs=5,
    max_prompt_bytes=_FLAGS.max_prompt_bytes,
    max_stop_strings=_FLAGS.max_stop_strings,
    max_stop_chars=_FLAGS.max_stop_chars,
)


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.InvalidRequest("x", field="f"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFound("x"), grpc.StatusCode.NOT_FOUND),
        (errors.CapacityExceeded("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.NotConfigured("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.BackendUnavailable("x"), grpc.StatusCode.UNAVAILABLE),
        (errors.DeadlineExceeded("x"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (errors.Cancelled("x"), grpc.StatusCode.CANCELLED),
    ],
)
def test_every_domain_error_has_a_code(exc, code):
    assert status_for(exc)[0] == code


def test_subclass_maps_like_its_base():
    class Mine(errors.NotFound):
        pass

    assert status_for(Mine("gone")) == (grpc.StatusCode.NOT_FOUND, "gone")


def _req(prompt="hi", ids=None, **sampling):
    return GenerationRequest(prompt=prompt, prompt_token_ids=ids, sampling=SamplingOptions(**sampling))


@pytest.mark.parametrize(
    ("request_", "field", "range_text"),
    [
        (_req(prompt=None), "prompt", "prompt_token_ids"),
        (_req(prompt="a", ids=(1,)), "prompt", "not both"),
        (_req(prompt=None, ids=(1, 100)), "prompt_token_ids", "[0, 99]"),
        (_req(max_new_tokens=0), "sampling.max_new_tokens", "[1, 32]"),
        (_req(max_new_tokens=33), "sampling.max_new_tokens", "[1, 32]"),
        (_req(temperature=-0.5), "sampling.temperature", ">= 0"),
        (_req(temperature=float("nan")), "sampling.temperature", ">= 0"),
        (_req(top_p=0.0), "sampling.top_p", "(0, 1]"),
        (_req(top_p=1.5), "sampling.top_p", "(0, 1]"),
        (_req(top_k=101), "sampling.top_k", "[0, 100]"),
        (_req(stop=("",)), "sampling.stop", "non-empty"),
        (_req(top_logprobs=6), "top_logprobs", "[0, 5]"),
        (_req(temperature=1e30), "sampling.temperature", "<= 2"),
        (_req(temperature=2.01), "sampling.temperature", "<= 2"),
        (_req(stop=("a",) * 17), "sampling.stop", "limit is 16"),
        (_req(stop=("x" * 257,)), "sampling.stop", "limit is 256"),
        (_req(prompt="é" * 131073), "prompt", "limit is 262144 bytes"),
        (_req(prompt=None, ids=(1,) * 64), "prompt_token_ids", "[1, 63] tokens"),
    ],
)
def test_bad_requests_name_field_and_range(request_, field, range_text):
    with pytest.raises(errors.InvalidRequest) as info:
        check_request(request_, LIMITS)
    assert info.value.field == field
    assert str(info.value).startswith(field + ":")
    assert range_text in str(info.value)


def test_good_request_passes():
    check_request(_req(max_new_tokens=32, temperature=0, top_p=1, top_k=100, top_logprobs=5), LIMITS)


def test_prompt_must_leave_room_for_one_token():
    check_prompt_length(63, LIMITS, field="prompt")
    with pytest.raises(errors.InvalidRequest, match=r"prompt: is 64 tokens; allowed range is \[1, 63\]"):
        check_prompt_length(64, LIMITS, field="prompt")


def test_config_from_flags():
    parser = argparse.ArgumentParser()
    ServeConfig.add_arguments(parser)
    args = parser.parse_args(
        [
            "--model",
            "/m",
            "--port",
            "1234",
            "--dtype",
            "float32",
            "--max-model-len",
            "512",
            "--enforce-eager",
            "--kv-cache-gib",
            "1",
            "--engine-arg",
            "max_num_batched_tokens=2048",
            "--engine-arg",
            "tokenizer=/t",
        ]
    )
    config = ServeConfig.from_args(args)
    assert config.address == "0.0.0.0:1234"
    kwargs = config.engine.engine_kwargs()
    assert kwargs["model"] == "/m" and kwargs["dtype"] == "float32" and kwargs["max_model_len"] == 512
    assert kwargs["enforce_eager"] is True and kwargs["kv_cache_memory_bytes"] == 1 << 30
    assert kwargs["max_num_batched_tokens"] == 2048 and kwargs["tokenizer"] == "/t"
    assert config.engine.model_name == "m"


def test_input_limit_flags():
    parser = argparse.ArgumentParser()
    ServeConfig.add_arguments(parser)
    config = ServeConfig.from_args(
        parser.parse_args(
            [
                "--model",
                "/m",
                "--max-prompt-bytes",
                "1000",
                "--max-stop-strings",
                "2",
                "--max-stop-chars",
                "9",
                "--max-attribution-targets",
                "12",
                "--max-intervention-positions",
                "7",
                "--max-concurrent-rpcs",
                "5",
                "--max-executor-queue",
                "3",
                "--executor-threads",
                "2",
                "--max-request-bytes",
                "4096",
                "--features-max-prompt-tokens",
                "99",
                "--features-max-top-k",
                "4",
                "--max-interventions",
                "6",
            ]
        )
    )
    lim = config.limits
    assert (
        lim.max_prompt_bytes,
        lim.max_stop_strings,
        lim.max_stop_chars,
        lim.max_targets,
        lim.max_positions,
        lim.max_concurrent_rpcs,
        lim.max_executor_queue,
        lim.executor_threads,
        lim.max_request_bytes,
    ) == (1000, 2, 9, 12, 7, 5, 3, 2, 4096)
    assert (config.features.max_prompt_tokens, config.features.max_top_k, config.features.max_interventions) == (
        99,
        4,
        6,
    )
    with pytest.raises(ValueError, match="--max-attribution-targets must be >= 10"):
        ServeConfig.from_args(parser.parse_args(["--model", "/m", "--max-attribution-targets", "5"]))
    with pytest.raises(ValueError, match="--max-concurrent-rpcs must be >= 1"):
        ServeConfig.from_args(parser.parse_args(["--model", "/m", "--max-concurrent-rpcs", "0"]))


def test_closed_stream_closes_the_engine_stream_before_returning():
    """GenerateStream closed at a message (a cancelled call: grpc cancels the task while it
    writes) closes the engine's stream, which aborts the request in vLLM, before the close
    returns, rather than when the garbage collector finalizes the engine's stream."""
    closed: list[str] = []

    class Engine:  # the part of GenerationEngine that GenerateStream uses
        def stream(self, request: GenerationRequest):
            async def chunks():
                try:
                    while True:
                        yield GenerationChunk(request_id="gen-1", text="a", token_ids=(5,))
                finally:
                    closed.append("engine stream")

            return chunks()

    async def cancel_after_one_message() -> list[str]:
        responses = GenerationServicer(Engine()).GenerateStream(pb.GenerateRequest(prompt="x"), None)
        await anext(responses)
        await responses.aclose()
        return list(closed)

    assert asyncio.run(cancel_after_one_message()) == ["engine stream"]
