"""A plain stream delta's event (rendered once per stream, then filled with each text) is the event
vLLM's protocol models render for it, for every kind of text."""

from __future__ import annotations

import json

import pytest

from circuit_serve.domain.features import MonitorAsk
from circuit_serve.domain.generation import FinishReason, GenerationChunk, GenerationRequest, Usage
from circuit_serve.http.openai_request import OpenAICall
from circuit_serve.http.openai_response import Shaper

TEXTS = [
    " hello",
    "",
    'a "quote" and a \\ backslash',
    "new\nline\ttab\r",
    "ünïcödé 日本語 🙂",
    "\x00\x01\x1f",
    "</script>",
]


def _call(chat: bool, *, logprobs: bool = False) -> OpenAICall:
    return OpenAICall(
        chat=chat,
        request=GenerationRequest(prompt="p"),
        ask=MonitorAsk(),
        model=None,
        stream=True,
        include_usage=False,
        logprobs=logprobs,
    )


def _events(raw: bytes) -> list[dict]:
    assert raw.startswith(b"data: ") and raw.endswith(b"\n\n")
    return [json.loads(e.removeprefix(b"data: ")) for e in raw.strip().split(b"\n\n")]


@pytest.mark.parametrize("chat", [False, True])
def test_plain_delta_events_equal_the_protocol_models_events(chat):
    shaper, reference = Shaper(_call(chat), "model"), Shaper(_call(chat), "model")
    reference.created = shaper.created
    for i, text in enumerate(["first", *TEXTS]):
        chunk = GenerationChunk(request_id="gen-1", text=text, token_ids=(i,))
        assert _events(shaper.chunk(chunk)) == _events(reference._rendered(chunk)), text
    last = GenerationChunk("gen-1", "end", (9,), finish_reason=FinishReason.LENGTH, usage=Usage(1, 9))
    assert _events(shaper.chunk(last)) == _events(reference._rendered(last))
    assert _events(shaper.chunk(last))[-1]["choices"][0]["finish_reason"] == "length"
