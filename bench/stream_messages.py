"""Per-message Python cost of a GenerateStream delta, server and client side, in one run:

    .venv/bin/python bench/stream_messages.py            # prints microseconds per message

Server: the engine's chunk -> the delta message (`convert_generation.chunk_to_pb`), against the
same message built by converting every field (`chunk_to_pb_general`, as every delta was built
before; chunks with logprobs or activations still are); then its serialization. Client: parsing the bytes and the message -> the
`StreamChunk` (`circuit_client._convert.stream_chunk`), against converting every field as before.
HTTP: a completion's and a chat stream's SSE event by vLLM's protocol models, against the
`Shaper`'s filled-in event. Medians of `--rounds` rounds of `--n` calls;
the spread is the min-max over rounds. Only the Python work of one message: gRPC's own send and
receive, and vLLM's output processing, are not in it (bench/generation.py and bench/front_doors.py
measure whole streams).
"""

from __future__ import annotations

import argparse
import statistics
import timeit

from circuit_client import StreamChunk, _convert
from circuit_proto.v1 import generation_pb2 as pb
from circuit_serve.domain.generation import GenerationChunk, TokenLogprobs
from circuit_serve.http.openai_request import OpenAICall, parse_chat, parse_completion
from circuit_serve.http.openai_response import Shaper
from circuit_serve.rpc import convert_generation

RID = "gen-0123456789abcdef0123456789abcdef"
CHUNK = GenerationChunk(request_id=RID, text=" hello", token_ids=(1234,))
WITH_LOGPROBS = GenerationChunk(
    request_id=RID, text=" hello", token_ids=(1234,), logprobs=(TokenLogprobs(1234, -0.5, ()),)
)


def full_stream_chunk(msg: pb.GenerateStreamResponse) -> StreamChunk:
    """The client's conversion of a delta as it was before (every field converted, empty or not)."""
    d = msg.delta
    return StreamChunk(
        request_id=msg.request_id,
        text=d.text,
        token_ids=tuple(d.token_ids),
        logprobs=_convert._logprobs(d.logprobs),
        activations=_convert._activations(d.activations),
    )


def sse_call(chat: bool) -> OpenAICall:
    """A streaming request as the front door parses it."""
    if chat:
        return parse_chat({"messages": [{"role": "user", "content": "p"}], "stream": True}, default_max_tokens=16)
    return parse_completion({"prompt": "p", "stream": True}, default_max_tokens=16)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    message = convert_generation.chunk_to_pb(CHUNK)[0]
    assert [message] == convert_generation.chunk_to_pb_general(CHUNK)
    wire = message.SerializeToString()
    cases = {
        "server: every field converted (before)": lambda: convert_generation.chunk_to_pb_general(CHUNK),
        "server: chunk_to_pb, plain delta": lambda: convert_generation.chunk_to_pb(CHUNK),
        "server: chunk_to_pb, delta with logprobs": lambda: convert_generation.chunk_to_pb(WITH_LOGPROBS),
        "server: SerializeToString": message.SerializeToString,
        "client: FromString": lambda: pb.GenerateStreamResponse.FromString(wire),
        "client: full conversion (before)": lambda: full_stream_chunk(message),
        "client: stream_chunk, plain delta": lambda: _convert.stream_chunk(message),
    }
    for chat in (False, True):  # HTTP: an SSE event by vLLM's protocol models, and the filled-in event
        shaper = Shaper(sse_call(chat), "model")
        shaper.chunk(CHUNK)  # a chat stream's first event opens it; the plain event's parts are made here
        kind = "chat" if chat else "completion"
        cases[f"http {kind}: protocol models (before)"] = lambda s=shaper: s._rendered(CHUNK)
        cases[f"http {kind}: Shaper.chunk, plain delta"] = lambda s=shaper: s.chunk(CHUNK)
    with open("/proc/loadavg") as f:
        print(f"load average {' '.join(f.read().split()[:3])}; {args.rounds} rounds of {args.n} calls")
    print(f"{'case':48} {'us/msg':>8} {'min-max':>14}")
    for name, fn in cases.items():
        us = [timeit.timeit(fn, number=args.n) / args.n * 1e6 for _ in range(args.rounds)]
        print(f"{name:48} {statistics.median(us):8.2f} {min(us):6.2f}-{max(us):<7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
