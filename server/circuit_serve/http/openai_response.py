"""Domain results and chunks -> OpenAI response JSON and server-sent events (vLLM 0.32's protocol models).

One `Shaper` per request holds what every message of it repeats (the id, `created`, the model name,
the running text offset), so a stream does no per-message work beyond its own tokens. Extensions:
- `finish_reason` may be `"feature_rule"`: a watch rule with action `stop` ended the completion;
- the response (a stream: its finishing chunk) carries `"circuit": {"request_id", "monitor_report"}`;
  `request_id` is what gRPC `Attribute(request_id=...)` audits; a stream with `monitor_values` carries
  `"circuit": {"activations": [{"position", "values"}]}` on the chunks that computed them.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

from vllm.entrypoints.generate.base.protocol import DeltaMessage
from vllm.entrypoints.openai.chat_completion.protocol import (
    ChatCompletionLogProb,
    ChatCompletionLogProbs,
    ChatCompletionLogProbsContent,
    ChatCompletionResponse,
    ChatCompletionResponseChoice,
    ChatCompletionResponseStreamChoice,
    ChatCompletionStreamResponse,
    ChatMessage,
)
from vllm.entrypoints.openai.completion.protocol import (
    CompletionLogProbs,
    CompletionResponse,
    CompletionResponseChoice,
    CompletionResponseStreamChoice,
    CompletionStreamResponse,
)
from vllm.entrypoints.serve.engine.protocol import UsageInfo

from circuit_serve.domain.features import MonitorReport
from circuit_serve.domain.generation import GenerationChunk, GenerationResult, TokenLogprobs, Usage
from circuit_serve.http.openai_request import OpenAICall

DONE = b"data: [DONE]\n\n"


def usage_info(u: Usage) -> UsageInfo:
    return UsageInfo(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        total_tokens=u.prompt_tokens + u.completion_tokens,
    )


def monitor_json(report: MonitorReport | None) -> dict | None:
    """The monitor report as JSON: {"features": [{watched: {name, feature: {layer, index}, threshold,
    action, label}, max_activation, prompt_positions, completion_positions}], "stopped_by"}."""
    return None if report is None else dataclasses.asdict(report)


def event(payload: Any) -> bytes:
    """One server-sent event of a pydantic model."""
    return b"data: " + payload.model_dump_json(exclude_none=True).encode() + b"\n\n"


class Shaper:
    def __init__(self, call: OpenAICall, model: str) -> None:
        self.call = call
        self.model = model
        self.created = int(time.time())
        self.id = ""
        self._offset = 0  # characters of completion text sent so far (completions' text_offset)
        self._first = True
        self._plain: tuple[bytes, bytes] | None = None  # a plain delta's event around its JSON text

    # ---- logprobs --------------------------------------------------------------

    def _completion_logprobs(self, items: tuple[TokenLogprobs, ...]) -> CompletionLogProbs | None:
        if not self.call.logprobs:
            return None
        offsets = []
        for t in items:
            offsets.append(self._offset)
            self._offset += len(t.token)
        return CompletionLogProbs(
            text_offset=offsets,
            token_logprobs=[t.logprob for t in items],
            tokens=[t.token for t in items],
            top_logprobs=[{tok: lp for _, tok, lp in t.top} for t in items],
        )

    def _chat_logprobs(self, items: tuple[TokenLogprobs, ...]) -> ChatCompletionLogProbs | None:
        if not self.call.logprobs:
            return None
        return ChatCompletionLogProbs(
            content=[
                ChatCompletionLogProbsContent(
                    token=t.token,
                    logprob=t.logprob,
                    bytes=list(t.token.encode()),
                    top_logprobs=[
                        ChatCompletionLogProb(token=tok, logprob=lp, bytes=list(tok.encode())) for _, tok, lp in t.top
                    ],
                )
                for t in items
            ]
        )

    def _ids(self, ids: tuple[int, ...]) -> list[int] | None:
        return list(ids) if self.call.token_ids else None

    def _circuit(self, request_id: str, report: MonitorReport | None) -> dict:
        out: dict[str, Any] = {"request_id": request_id}
        if report is not None:
            out["monitor_report"] = monitor_json(report)
        return out

    # ---- whole responses ---------------------------------------------------------

    def result(self, r: GenerationResult) -> bytes:
        """The JSON body of a non-streaming response."""
        circuit = self._circuit(r.request_id, r.monitor)
        finish, stop = str(r.finish_reason), r.stop_sequence
        if self.call.chat:
            body: Any = ChatCompletionResponse(
                id=f"chatcmpl-{r.request_id}",
                created=self.created,
                model=self.model,
                choices=[
                    ChatCompletionResponseChoice(
                        index=0,
                        message=ChatMessage(role="assistant", content=r.text),
                        logprobs=self._chat_logprobs(r.logprobs),
                        finish_reason=finish,
                        stop_reason=stop,
                        token_ids=self._ids(r.token_ids),
                    )
                ],
                usage=usage_info(r.usage),
                circuit=circuit,
            )
        else:
            body = CompletionResponse(
                id=f"cmpl-{r.request_id}",
                created=self.created,
                model=self.model,
                choices=[
                    CompletionResponseChoice(
                        index=0,
                        text=r.text,
                        logprobs=self._completion_logprobs(r.logprobs),
                        finish_reason=finish,
                        stop_reason=stop,
                        token_ids=self._ids(r.token_ids),
                    )
                ],
                usage=usage_info(r.usage),
                circuit=circuit,
            )
        return body.model_dump_json(exclude_none=True).encode()

    # ---- streams -----------------------------------------------------------------

    def chunk(self, c: GenerationChunk) -> bytes:
        """The events of one engine chunk (a chat stream's first one opens with the assistant role).

        A plain delta (text only: not the last, no logprobs, token ids or activations, not a chat
        stream's first), the event of nearly every token, is its stream's first plain event rendered
        by the protocol models once, around a new JSON string: 1-2 us instead of 20-55 us."""
        if c.finish_reason is None and not (c.activations or self.call.logprobs or self.call.token_ids):
            if not (self.call.chat and self._first):
                if self._plain is None:
                    self._plain = self._split(c)
                if self._plain:
                    head, tail = self._plain
                    return head + json.dumps(c.text, ensure_ascii=False).encode() + tail
        return self._rendered(c)

    def _split(self, c: GenerationChunk) -> tuple[bytes, bytes] | tuple[()]:
        """A plain delta's event split around its text (empty: the text is not found once)."""
        mark = "circuit-serve-text-mark"
        parts = self._rendered(dataclasses.replace(c, text=mark)).split(json.dumps(mark).encode())
        return (parts[0], parts[1]) if len(parts) == 2 else ()

    def _rendered(self, c: GenerationChunk) -> bytes:
        """`chunk` by the protocol models, every field converted."""
        last = c.finish_reason is not None
        finish = str(c.finish_reason) if last else None
        extra: dict[str, Any] = {}
        if last:
            extra["circuit"] = self._circuit(c.request_id, c.monitor)
        elif c.activations:
            extra["circuit"] = {"activations": [dataclasses.asdict(v) for v in c.activations]}
        out = b""
        if self.call.chat:
            self.id = self.id or f"chatcmpl-{c.request_id}"
            if self._first:
                self._first = False
                opening = ChatCompletionResponseStreamChoice(index=0, delta=DeltaMessage(role="assistant", content=""))
                out = event(
                    ChatCompletionStreamResponse(id=self.id, created=self.created, model=self.model, choices=[opening])
                )
            choice: Any = ChatCompletionResponseStreamChoice(
                index=0,
                delta=DeltaMessage(content=c.text) if c.text or not last else DeltaMessage(),
                logprobs=self._chat_logprobs(c.logprobs),
                finish_reason=finish,
                stop_reason=c.stop_sequence,
                token_ids=self._ids(c.token_ids),
            )
            msg: Any = ChatCompletionStreamResponse(
                id=self.id, created=self.created, model=self.model, choices=[choice], **extra
            )
        else:
            self.id = self.id or f"cmpl-{c.request_id}"
            choice = CompletionResponseStreamChoice(
                index=0,
                text=c.text,
                logprobs=self._completion_logprobs(c.logprobs),
                finish_reason=finish,
                stop_reason=c.stop_sequence,
                token_ids=self._ids(c.token_ids),
            )
            msg = CompletionStreamResponse(
                id=self.id, created=self.created, model=self.model, choices=[choice], **extra
            )
        return out + event(msg)

    def usage(self, u: Usage) -> bytes:
        """The last event when `stream_options.include_usage`: no choices, the usage."""
        cls: Any = ChatCompletionStreamResponse if self.call.chat else CompletionStreamResponse
        return event(cls(id=self.id, created=self.created, model=self.model, choices=[], usage=usage_info(u)))

    def error(self, body: dict) -> bytes:
        """An error after the stream began (the status line is already sent), as vLLM's server does."""
        return b"data: " + json.dumps(body).encode() + b"\n\n"
