"""The OpenAI-compatible HTTP front door through the official `openai` SDK and raw HTTP, on one real
server (real vLLM, float32, greedy): the same ids as gRPC Generate, streaming, chat with the model's
template, watch rules, errors as OpenAI's JSON, the SDK's retries on 503 and 429, audits over gRPC."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request

import openai
import pytest
from conftest import cancelled_stream_tokens

from circuit_client import CircuitClient, Credentials, Sampling
from circuit_client.attribution import AttributionClient, AttributionSettings
from circuit_client.errors import CircuitRpcError
from tests.http_front_door.openai_server import MAX_IN_FLIGHT, TOKENS, HttpServer, chat_model_dir, launch_http_server

PROMPT = "the old river runs to the sea and the"
GREEDY = {"temperature": 0, "max_tokens": 8}
MESSAGES = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "where does the river run"}]


@pytest.fixture(scope="module")
def http_server(demo_model_dir, tmp_path_factory):
    server = launch_http_server(chat_model_dir(demo_model_dir, tmp_path_factory), tmp_path_factory)
    yield server
    server.process.stop()


@pytest.fixture(scope="module")
def client(http_server: HttpServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=http_server.base_url, api_key=TOKENS["acme"], max_retries=0, timeout=120)


def grpc_client(server: HttpServer, tenant: str = "acme") -> CircuitClient:
    return CircuitClient(server.process.target, credentials=Credentials(token=TOKENS[tenant]), timeout=120)


def test_loading_answers_503_and_the_sdk_retries_until_served(http_server):
    assert http_server.loading_status == 503
    err = http_server.loading_body["error"]
    assert err["type"] == "service_unavailable_error" and "not loaded" in err["message"]
    assert set(err) == {"message", "type", "param", "code"} and http_server.loading_retry_after == "1"
    with grpc_client(http_server) as g:
        expected = g.generate("the old river", Sampling(max_new_tokens=3, temperature=0)).text
    assert http_server.retried_text == expected  # after the SDK's own retries
    assert http_server.process.metric("circuit_http_requests_total", route="/v1/completions", status="503") >= 2


def test_models_and_health(http_server, client):
    assert [m.id for m in client.models.list().data] == [http_server.model]
    with urllib.request.urlopen(f"http://127.0.0.1:{http_server.http_port}/health") as resp:
        assert resp.status == 200


def test_completion_ids_equal_grpc_generate_streamed_or_not(http_server, client):
    with grpc_client(http_server) as g:
        ref = g.generate(PROMPT, Sampling(max_new_tokens=8, temperature=0, ignore_eos=True))
    kw = {
        "model": http_server.model,
        "prompt": PROMPT,
        **GREEDY,
        "extra_body": {"ignore_eos": True, "return_token_ids": True},
    }
    whole = client.completions.create(**kw)
    assert whole.choices[0].token_ids == list(ref.token_ids)
    assert whole.choices[0].text == ref.text and whole.choices[0].finish_reason == "length"
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (ref.usage.prompt_tokens, 8)
    chunks = list(client.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == ref.text
    assert [t for c in chunks if c.choices for t in c.choices[0].token_ids] == list(ref.token_ids)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_logprobs_stop_and_seed(http_server, client):
    out = client.completions.create(model=http_server.model, prompt=PROMPT, logprobs=2, **GREEDY)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == out.usage.completion_tokens
    assert all(len(top) <= 2 and max(top.values()) <= 0 for top in lp.top_logprobs)
    assert max(lp.top_logprobs[0].values()) == pytest.approx(lp.token_logprobs[0])  # greedy: the top one
    full = out.choices[0].text
    cut = full.split()[1]
    stopped = client.completions.create(model=http_server.model, prompt=PROMPT, stop=[cut], **GREEDY)
    assert stopped.choices[0].finish_reason == "stop" and cut not in stopped.choices[0].text
    seeded = [
        client.completions.create(
            model=http_server.model, prompt=PROMPT, seed=7, temperature=1.0, top_p=0.9, max_tokens=6
        )
        .choices[0]
        .text
        for _ in range(2)
    ]
    assert seeded[0] == seeded[1]


def test_chat_uses_the_template_as_grpc_messages_do(http_server, client):
    with grpc_client(http_server) as g:
        ref = g.generate(
            sampling=Sampling(max_new_tokens=6, temperature=0), messages=[(m["role"], m["content"]) for m in MESSAGES]
        )
    whole = client.chat.completions.create(
        model=http_server.model, messages=MESSAGES, temperature=0, max_completion_tokens=6
    )
    assert whole.choices[0].message.content == ref.text and whole.choices[0].message.role == "assistant"
    assert whole.usage.prompt_tokens == ref.usage.prompt_tokens
    stream = client.chat.completions.create(
        model=http_server.model,
        messages=MESSAGES,
        temperature=0,
        max_tokens=6,
        stream=True,
        logprobs=True,
        top_logprobs=1,
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ref.text
    assert (
        sum(len(c.choices[0].logprobs.content) for c in chunks if c.choices[0].logprobs) == ref.usage.completion_tokens
    )


def test_asyncio_client_streams_and_whole_at_once(http_server, client):
    ref = client.completions.create(model=http_server.model, prompt=PROMPT, **GREEDY).choices[0].text

    async def run() -> list[str]:
        aclient = openai.AsyncOpenAI(base_url=http_server.base_url, api_key=TOKENS["acme"], max_retries=0)

        async def streamed() -> str:
            parts = []
            async for c in await aclient.completions.create(
                model=http_server.model, prompt=PROMPT, stream=True, **GREEDY
            ):
                parts.append(c.choices[0].text)
            return "".join(parts)

        async def whole() -> str:
            r = await aclient.chat.completions.create(
                model=http_server.model, messages=MESSAGES, temperature=0, max_tokens=4
            )
            return r.choices[0].message.content

        async def completion() -> str:
            return (await aclient.completions.create(model=http_server.model, prompt=PROMPT, **GREEDY)).choices[0].text

        out = await asyncio.gather(streamed(), completion(), whole())
        await aclient.close()
        return out

    streamed, whole, chat = asyncio.run(run())
    assert streamed == whole == ref and chat


def test_watch_rule_stops_with_feature_rule(http_server, client):
    rule = {"name": "always", "layer": 0, "index": 3, "threshold": -1e9, "action": "stop"}
    out = client.completions.create(
        model=http_server.model, prompt=PROMPT, **GREEDY, extra_body={"circuit": {"watch": [rule]}}
    )
    assert out.choices[0].finish_reason == "feature_rule"
    report = out.model_extra["circuit"]["monitor_report"]
    assert report["stopped_by"] == "always" and report["features"][0]["watched"]["name"] == "always"
    chunks = list(
        client.completions.create(
            model=http_server.model, prompt=PROMPT, stream=True, **GREEDY, extra_body={"circuit": {"watch": [rule]}}
        )
    )
    assert chunks[-1].choices[0].finish_reason == "feature_rule"
    assert chunks[-1].model_extra["circuit"]["monitor_report"]["stopped_by"] == "always"


def test_errors_carry_openai_json_and_status(http_server, client):
    m = http_server.model
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=m, prompt=PROMPT, max_tokens=-5)
    assert err.value.status_code == 400 and err.value.body["param"] == "max_tokens"
    status, body, _ = http_server.post("/v1/completions", {"model": m, "prompt": PROMPT, "temperature": "hot"})
    assert (
        status == 400 and body["error"]["param"] == "temperature" and body["error"]["type"] == "invalid_request_error"
    )
    status, body, _ = http_server.post("/v1/completions", {"model": m, "prompt": PROMPT, "n": 2})
    assert status == 400 and body["error"]["param"] == "n"
    status, body, _ = http_server.post("/v1/completions", {"model": "gpt-4", "prompt": PROMPT})
    assert status == 404 and body["error"]["code"] == "model_not_found"
    long = " ".join(["the river"] * 400)
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=m, prompt=long, max_tokens=2)
    assert err.value.body["param"] == "prompt" and "max_model_len" in err.value.body["message"]
    status, body, _ = http_server.post("/v1/completions", {"model": m, "prompt": PROMPT}, token=None)
    assert status == 401 and body["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=http_server.base_url, api_key="wrong", max_retries=0).completions.create(
            model=m, prompt="x"
        )
    with pytest.raises(openai.PermissionDeniedError) as err:
        openai.OpenAI(base_url=http_server.base_url, api_key=TOKENS["auditor"], max_retries=0).completions.create(
            model=m, prompt="x"
        )
    assert "'generate'" in err.value.body["message"]
    assert client.completions.create(model=m, prompt=PROMPT, max_tokens=1).choices[0].text is not None  # still serving


def test_over_the_limit_is_429_and_the_sdk_retries(http_server, client):
    m = http_server.model
    held = [
        client.completions.create(model=m, prompt=PROMPT, max_tokens=256, stream=True, extra_body={"ignore_eos": True})
        for _ in range(MAX_IN_FLIGHT)
    ]
    for s in held:
        next(iter(s))  # each one is in flight
    with pytest.raises(openai.RateLimitError) as err:
        client.completions.create(model=m, prompt=PROMPT, max_tokens=1)
    assert err.value.body["code"] == "capacity_exceeded" and err.value.response.headers["retry-after"] == "1"
    before = http_server.process.metric("circuit_http_requests_total", route="/v1/completions", status="429")

    def release() -> None:
        time.sleep(0.5)
        for s in held:
            s.close()  # the server aborts them

    threading.Thread(target=release).start()
    patient = client.with_options(max_retries=5)
    assert patient.completions.create(model=m, prompt=PROMPT, max_tokens=1).choices[0].finish_reason
    after = http_server.process.metric("circuit_http_requests_total", route="/v1/completions", status="429")
    assert after >= before + 1  # its first tries were refused while the streams were held


def test_a_client_that_hangs_up_aborts_its_stream(http_server, client):
    """Closing an SSE stream (the client goes away) aborts the request in vLLM, as a cancelled gRPC
    stream does; the door keeps serving."""
    m = http_server.model

    def hang_up() -> None:
        stream = client.completions.create(
            model=m, prompt=PROMPT, max_tokens=256, stream=True, extra_body={"ignore_eos": True}
        )
        next(iter(stream))
        stream.close()

    counts = cancelled_stream_tokens(http_server.process, hang_up, 256)
    assert counts[-1] < 256, f"every try ran out to max_tokens (tokens per try: {counts})"
    assert client.completions.create(model=m, prompt=PROMPT, max_tokens=2).choices[0].finish_reason == "length"


def test_an_http_completion_is_audited_by_request_id_over_grpc(http_server, client):
    out = client.completions.create(
        model=http_server.model, prompt=PROMPT, **GREEDY, extra_body={"return_token_ids": True}
    )
    request_id = out.model_extra["circuit"]["request_id"]
    with grpc_client(http_server) as g:
        prompt_ids = list(g.tokenize(PROMPT).token_ids)
    small = AttributionSettings(max_feature_nodes=16, batch_size=32)
    k = 2
    with AttributionClient(http_server.process.target, timeout=300, credentials=Credentials(token=TOKENS["acme"])) as a:
        events = []
        a.attribute(None, small, request_id=request_id, token_index=k, on_event=events.append)
    assert list(events[0].token_ids) == [*prompt_ids, *out.choices[0].token_ids[:k]]
    assert events[0].audited_token_id == out.choices[0].token_ids[k]
    with AttributionClient(http_server.process.target, timeout=60, credentials=Credentials(token=TOKENS["bob"])) as a:
        with pytest.raises(CircuitRpcError):  # another tenant's completion
            a.attribute(None, small, request_id=request_id, token_index=k)


def test_http_metrics_count_routes_and_statuses(http_server):
    p = http_server.process
    assert p.metric("circuit_http_requests_total", route="/v1/completions", status="200") >= 5
    assert p.metric("circuit_http_requests_total", route="/v1/chat/completions", status="200") >= 2
    assert p.metric("circuit_http_requests_total", route="/v1/completions", status="401") >= 2
    assert p.metric("circuit_http_requests_total", route="/v1/completions", status="403") >= 1
