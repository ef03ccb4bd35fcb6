"""Bad input gets INVALID_ARGUMENT naming the field and the allowed range; serving goes on."""

from __future__ import annotations

import grpc
import pytest

from circuit_client import CircuitClient, CircuitRpcError, FinishReason, Sampling

OK = Sampling(max_new_tokens=4, temperature=0.0)

CASES = {
    "empty prompt": (dict(prompt=""), "prompt", "non-empty"),
    "max_new_tokens 0": (dict(prompt="hi", sampling=Sampling(max_new_tokens=0)), "sampling.max_new_tokens", "[1, 256]"),
    "max_new_tokens over limit": (
        dict(prompt="hi", sampling=Sampling(max_new_tokens=257)),
        "sampling.max_new_tokens",
        "[1, 256]",
    ),
    "prompt too long": (dict(prompt="Paris is the capital of France. " * 200), "prompt", "[1, 511] tokens"),
    "token ids too long": (dict(prompt_token_ids=[5] * 512), "prompt_token_ids", "[1, 511] tokens"),
    "negative temperature": (dict(prompt="hi", sampling=Sampling(temperature=-0.1)), "sampling.temperature", ">= 0"),
    "top_p zero": (dict(prompt="hi", sampling=Sampling(top_p=0.0)), "sampling.top_p", "(0, 1]"),
    "top_p above one": (dict(prompt="hi", sampling=Sampling(top_p=1.01)), "sampling.top_p", "(0, 1]"),
    "unknown token id": (dict(prompt_token_ids=[1, 5, 10**6]), "prompt_token_ids", "ids must be in [0,"),
    "too many logprobs": (dict(prompt="hi", sampling=Sampling(top_logprobs=21)), "top_logprobs", "[0, 20]"),
}


@pytest.fixture(scope="module")
def client(server):
    with CircuitClient(server.target, timeout=60) as c:
        yield c


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "stream"])
def test_bad_input_is_invalid_argument(client, case, streaming):
    kwargs, field, allowed = CASES[case]
    with pytest.raises(CircuitRpcError) as info:
        if streaming:
            list(client.stream(**kwargs))
        else:
            client.generate(**kwargs)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details.startswith(f"{field}:"), info.value.details
    assert allowed in info.value.details, info.value.details
    # the server keeps serving
    assert client.generate("The capital of France is", OK).finish_reason == FinishReason.LENGTH


def test_deadline_exceeded(client):
    with pytest.raises(CircuitRpcError) as info:
        client.generate("hi", Sampling(max_new_tokens=256, ignore_eos=True), timeout=0.05)
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
