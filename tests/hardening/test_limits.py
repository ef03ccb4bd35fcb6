"""Every input limit against a real server: INVALID_ARGUMENT naming the field and the limit,
checked before the work starts; undecodable bytes; the concurrency cap; ModelInfo lists them all."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from circuit_client import CircuitClient
from circuit_proto.v1 import attribution_pb2 as apb
from circuit_proto.v1 import features_pb2 as fpb
from circuit_proto.v1 import generation_pb2 as gpb
from tests.hardening.conftest import LIMIT_FLAGS

GEN = "/circuit.v1.Generation/"
ATT = "/circuit.v1.Attribution/"
FEA = "/circuit.v1.Features/"
RESPONSES = {
    "Generate": gpb.GenerateResponse,
    "GenerateStream": gpb.GenerateStreamResponse,
    "Tokenize": gpb.TokenizeResponse,
    "ModelInfo": gpb.ModelInfoResponse,
    "Attribute": apb.AttributeResponse,
    "GetGraph": apb.GetGraphResponse,
    "FeatureActivations": fpb.FeatureActivationsResponse,
    "SteerResponse": fpb.SteerResponse,
    "Steer": fpb.SteerResponse,
}
STREAMING = {"GenerateStream", "Attribute"}


@pytest.fixture(scope="module")
def channel(limited_server):
    with grpc.insecure_channel(limited_server.target) as ch:
        yield ch


def call(channel, path: str, request, timeout: float = 60.0) -> tuple[grpc.StatusCode, str]:
    """Send `request` (a message or raw bytes) to `path`; (status code, details) once it ends."""
    name = path.rsplit("/", 1)[1]
    serialize = (lambda b: b) if isinstance(request, bytes) else (lambda m: m.SerializeToString())
    kwargs = dict(request_serializer=serialize, response_deserializer=RESPONSES[name].FromString)
    try:
        if name in STREAMING:
            for _ in channel.unary_stream(path, **kwargs)(request, timeout=timeout):
                pass
        else:
            channel.unary_unary(path, **kwargs)(request, timeout=timeout)
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


def gen(prompt="hi", **sampling) -> gpb.GenerateRequest:
    return gpb.GenerateRequest(prompt=prompt, sampling=gpb.SamplingParams(max_new_tokens=2, **sampling))


P = "the cat sat on the mat"
CASES = [
    # generation (unary and stream alike)
    (GEN + "Generate", gen("x" * 2001), "prompt:", "limit is 2000 bytes"),
    (GEN + "GenerateStream", gen("é" * 1001), "prompt:", "limit is 2000 bytes"),
    (GEN + "Generate", gpb.GenerateRequest(prompt_token_ids=[5] * 600), "prompt_token_ids:", "[1, 511] tokens"),
    (GEN + "Generate", gen(stop=["a", "b", "c", "d"]), "sampling.stop:", "limit is 3"),
    (GEN + "GenerateStream", gen(stop=["x" * 13]), "sampling.stop:", "limit is 12"),
    (GEN + "Generate", gen(temperature=1e30), "sampling.temperature:", "<= 2"),
    (GEN + "GenerateStream", gen(temperature=2.5), "sampling.temperature:", "<= 2"),
    (
        GEN + "Generate",
        gpb.GenerateRequest(prompt="hi", sampling=gpb.SamplingParams(max_new_tokens=17)),
        "sampling.max_new_tokens:",
        "[1, 16]",
    ),
    (GEN + "Generate", gen(top_k=4_000_000_000), "sampling.top_k:", "allowed range"),
    (GEN + "Generate", gpb.GenerateRequest(prompt="hi", top_logprobs=10**9), "top_logprobs:", "[0, 20]"),
    (GEN + "Tokenize", gpb.TokenizeRequest(text="y" * 2001), "text:", "limit is 2000 bytes"),
    # attribution
    (ATT + "Attribute", apb.AttributeRequest(prompt="z" * 2001), "prompt:", "limit is 2000 bytes"),
    (ATT + "Attribute", apb.AttributeRequest(prompt_token_ids=[5] * 25), "prompt_token_ids:", "limit is 24"),
    (ATT + "Attribute", apb.AttributeRequest(prompt=" ".join(["cat"] * 40)), "prompt:", "limit is 24"),
    (
        ATT + "Attribute",
        apb.AttributeRequest(
            prompt=P, settings=apb.AttributionSettings(targets=[apb.AttributionTarget(token_id=5)] * 11)
        ),
        "settings.targets:",
        "limit is 10",
    ),
    (
        ATT + "Attribute",
        apb.AttributeRequest(prompt=P, settings=apb.AttributionSettings(max_n_logits=11)),
        "max_n_logits:",
        "limit of 10",
    ),
    (
        ATT + "Attribute",
        apb.AttributeRequest(prompt=P, settings=apb.AttributionSettings(max_feature_nodes=65)),
        "max_feature_nodes:",
        "limit of 64",
    ),
    (
        ATT + "Attribute",
        apb.AttributeRequest(prompt=P, settings=apb.AttributionSettings(batch_size=65)),
        "batch_size:",
        "limit of 64",
    ),
    (ATT + "Attribute", apb.AttributeRequest(request_id="r" * 65, token_index=0), "request_id:", "64 bytes"),
    # features and steering
    (
        FEA + "FeatureActivations",
        fpb.FeatureActivationsRequest(prompt="w" * 2001, top_k=1),
        "prompt:",
        "limit is 2000 bytes",
    ),
    (
        FEA + "FeatureActivations",
        fpb.FeatureActivationsRequest(prompt=" ".join(["cat"] * 40), top_k=1),
        "prompt:",
        "limit is 24",
    ),
    (
        FEA + "FeatureActivations",
        fpb.FeatureActivationsRequest(prompt_token_ids=[5] * 25, top_k=1),
        "prompt_token_ids:",
        "limit is 24",
    ),
    (FEA + "FeatureActivations", fpb.FeatureActivationsRequest(prompt=P, top_k=9), "top_k:", "[1, 8]"),
    (
        FEA + "FeatureActivations",
        fpb.FeatureActivationsRequest(prompt=P, features=[fpb.FeatureRef(layer=0, index=1)] * 11),
        "features:",
        "limit is 10",
    ),
    (
        FEA + "Steer",
        fpb.SteerRequest(
            max_new_tokens=4,
            prompt="v" * 2001,
            interventions=[
                fpb.Intervention(feature=fpb.FeatureRef(layer=0, index=1), op=fpb.INTERVENTION_OP_SET, positions=[1])
            ],
        ),
        "prompt:",
        "limit is 2000 bytes",
    ),
    (
        FEA + "Steer",
        fpb.SteerRequest(
            max_new_tokens=4,
            prompt=P,
            interventions=[
                fpb.Intervention(
                    feature=fpb.FeatureRef(layer=0, index=1), op=fpb.INTERVENTION_OP_SET, positions=[1] * 7
                )
            ],
        ),
        "interventions[0].positions:",
        "limit is 6",
    ),
    (
        FEA + "Steer",
        fpb.SteerRequest(
            max_new_tokens=4,
            prompt=P,
            interventions=[
                fpb.Intervention(feature=fpb.FeatureRef(layer=0, index=1), op=fpb.INTERVENTION_OP_SET, positions=[1])
            ]
            * 5,
        ),
        "interventions:",
        "limit is 4",
    ),
    (
        FEA + "Steer",
        fpb.SteerRequest(
            max_new_tokens=4,
            prompt=P,
            temperature=1e30,
            interventions=[
                fpb.Intervention(feature=fpb.FeatureRef(layer=0, index=1), op=fpb.INTERVENTION_OP_SET, positions=[1])
            ],
        ),
        "temperature:",
        "<= 2",
    ),
    (
        FEA + "Steer",
        fpb.SteerRequest(
            prompt=P,
            max_new_tokens=9,
            interventions=[
                fpb.Intervention(feature=fpb.FeatureRef(layer=0, index=1), op=fpb.INTERVENTION_OP_SET, positions=[1])
            ],
        ),
        "max_new_tokens:",
        "[1, 8]",
    ),
]


@pytest.mark.parametrize(
    "path, request_, field, limit", CASES, ids=[f"{p.rsplit('/', 1)[1]}-{f}{i}" for i, (p, _, f, _) in enumerate(CASES)]
)
def test_over_a_limit_is_invalid_argument_naming_field_and_limit(channel, path, request_, field, limit):
    code, details = call(channel, path, request_)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith(field), details
    assert limit in details, details


def test_request_over_the_message_limit_is_refused_by_grpc(channel):
    code, _ = call(channel, GEN + "Generate", gpb.GenerateRequest(prompt_token_ids=[5] * 70000))  # ~70 KB
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize(
    "path",
    [
        GEN + "Generate",
        GEN + "GenerateStream",
        GEN + "Tokenize",
        ATT + "Attribute",
        ATT + "GetGraph",
        FEA + "FeatureActivations",
        FEA + "Steer",
    ],
)
def test_undecodable_bytes_are_invalid_argument(channel, path):
    # field 1 (a string in every one of these requests) holding invalid UTF-8, then a truncated varint
    for raw in (b"\x0a\x02\xff\xfe", b"\x08\xff\xff\xff", b"\xff\xff\xff\xff\xff"):
        code, details = call(channel, path, raw)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (raw, code, details)
        assert "do not decode" in details and "Error" not in details, details


def test_model_info_lists_every_limit(limited_server):
    with CircuitClient(limited_server.target) as client:
        info = client.model_info()
    limits = info.limits
    assert set(limits) == {f.name for f in gpb.Limits.DESCRIPTOR.fields}, "ModelInfo leaves a limit unset"
    names = {
        "--max-attribution-targets": "attribution_max_targets",
        "--max-intervention-positions": "steer_max_positions",
        "--max-new-tokens-limit": "generation_max_new_tokens",
        "--max-stop-strings": "generation_max_stop_strings",
        "--max-stop-chars": "generation_max_stop_chars",
        "--max-steer-new-tokens": "steer_max_new_tokens",
        "--max-interventions": "steer_max_interventions",
        "--features-max-listed": "features_max_listed",
    }
    for flag, value in LIMIT_FLAGS.items():
        name = names.get(flag, flag.removeprefix("--").replace("-", "_"))
        assert limits[name] == value, (flag, name, limits.get(name))
    assert limits["generation_max_temperature"] == 2.0 and limits["generation_max_prompt_tokens"] == 511


def test_the_server_keeps_serving_valid_requests(channel):
    code, details = call(channel, GEN + "Generate", gen("The capital of France is", temperature=0))
    assert code == grpc.StatusCode.OK, details


def test_concurrent_rpcs_beyond_the_cap_get_resource_exhausted(launch_server):
    srv = launch_server("--max-concurrent-rpcs", "2")
    started = threading.Barrier(3)
    results: list[grpc.StatusCode] = []

    def hold():
        with grpc.insecure_channel(srv.target) as ch:
            stream = ch.unary_stream(
                GEN + "GenerateStream",
                request_serializer=gpb.GenerateRequest.SerializeToString,
                response_deserializer=gpb.GenerateStreamResponse.FromString,
            )
            request = gpb.GenerateRequest(
                prompt="Once", sampling=gpb.SamplingParams(max_new_tokens=256, ignore_eos=True, temperature=0)
            )
            responses = stream(request, timeout=120)
            next(responses)  # the call is being served
            started.wait(60)
            started.wait(60)  # until the third call has been answered
            responses.cancel()

    threads = [threading.Thread(target=hold) for _ in range(2)]
    for t in threads:
        t.start()
    started.wait(60)
    with grpc.insecure_channel(srv.target) as ch:
        results.append(call(ch, GEN + "Generate", gen("hi"))[0])
    started.wait(60)
    for t in threads:
        t.join(60)
    assert results == [grpc.StatusCode.RESOURCE_EXHAUSTED]
    # The slots are free again once the server has processed the two cancellations (asynchronously,
    # after the client side returned): poll for a while instead of asking once.
    deadline, code = time.monotonic() + 15, None
    with grpc.insecure_channel(srv.target) as ch:
        while code != grpc.StatusCode.OK and time.monotonic() < deadline:
            code = call(ch, GEN + "Generate", gen("hi"))[0]
            if code != grpc.StatusCode.OK:
                time.sleep(0.2)
    assert code == grpc.StatusCode.OK
    srv.stop()
