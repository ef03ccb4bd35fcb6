"""GenerateStream coalesces deltas for a reader that lags, and sends one token a message to one that keeps up.

A message carries every token vLLM had ready when the stream asked for the next one. A client that
reads slowly (here: a 512-byte HTTP/2 window that it stops reading while the tokens are generated)
holds the server's writes back, the tokens pile up in vLLM and leave in a few messages; the text and
ids still concatenate to the unary result.
"""

from __future__ import annotations

import asyncio

import grpc

from circuit_client import AsyncCircuitClient, Sampling
from circuit_proto.v1 import generation_pb2 as pb
from circuit_proto.v1 import generation_pb2_grpc as pb_grpc

TOKENS = 96
PROMPT = "Once upon a time"
GREEDY = Sampling(max_new_tokens=TOKENS, temperature=0.0, ignore_eos=True)
REQUEST = pb.GenerateRequest(
    prompt=PROMPT, sampling=pb.SamplingParams(max_new_tokens=TOKENS, temperature=0.0, ignore_eos=True)
)
SMALL_WINDOW = [("grpc.http2.lookahead_bytes", 512), ("grpc.http2.bdp_probe", 0)]


def _deltas(messages: list[pb.GenerateStreamResponse]) -> list[pb.TokenDelta]:
    assert messages[-1].WhichOneof("event") == "end"
    return [m.delta for m in messages[:-1]]


async def _read(target: str, options: list, stall: asyncio.Future | None) -> list[pb.GenerateStreamResponse]:
    """The stream's messages; with `stall`, stop reading after the first message until it is done."""
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        messages = []
        async for message in pb_grpc.GenerationStub(channel).GenerateStream(REQUEST, timeout=300):
            messages.append(message)
            if stall is not None and len(messages) == 1:
                await stall
        return messages


def test_a_lagging_reader_gets_several_tokens_a_message_and_a_fast_one_one(server):
    async def run():
        async with AsyncCircuitClient(server.target, timeout=300) as client:
            loop = asyncio.get_running_loop()
            unary_done = loop.create_future()
            slow = asyncio.create_task(_read(server.target, SMALL_WINDOW, unary_done))
            # The same greedy request, unary and batched with the slow stream: when it is done, the
            # slow stream's tokens have been generated too (and wait in vLLM behind the full window).
            unary = await client.generate(PROMPT, GREEDY)
            unary_done.set_result(None)
            fast = await _read(server.target, [], None)
            return unary, await slow, fast

    unary, slow, fast = asyncio.run(run())
    for messages in (slow, fast):
        deltas = _deltas(messages)
        assert "".join(d.text for d in deltas) == unary.text
        assert tuple(t for d in deltas for t in d.token_ids) == unary.token_ids
        assert messages[-1].end.usage.completion_tokens == TOKENS
        assert len({m.request_id for m in messages}) == 1
    slow_deltas, fast_deltas = _deltas(slow), _deltas(fast)
    assert len(slow_deltas) <= TOKENS // 3, f"{len(slow_deltas)} messages for {TOKENS} tokens: not coalesced"
    assert max(len(d.token_ids) for d in slow_deltas) > 1
    assert len(fast_deltas[0].token_ids) == 1  # the first token leaves alone: time to first token does not grow
    assert len(fast_deltas) > len(slow_deltas)
