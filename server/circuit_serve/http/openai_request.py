"""OpenAI request bodies -> this server's domain requests (no HTTP here).

1. The body is validated by vLLM's own OpenAI protocol models (pinned vLLM 0.32:
   `CompletionRequest`, `ChatCompletionRequest`); their field errors become 400s naming the field.
2. Fields this server does not serve (`n` other than 1, `echo`, `suffix`, penalties, tools, ...) are
   refused by name rather than ignored.
3. The sampling fields become `SamplingOptions`; chat `messages` become `ChatMessage`s, rendered later
   by the engine with the model's chat template exactly as gRPC `messages` are (domain/chat.py).
4. The extension field `circuit` (`{"watch": [...], "monitor": bool, "monitor_values": bool}`)
   becomes a `MonitorAsk`, resolved by the features service as on gRPC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest
from vllm.exceptions import VLLMValidationError

from circuit_serve.domain.chat import ChatMessage
from circuit_serve.domain.features import Action, FeatureRef, MonitorAsk, WatchedFeature
from circuit_serve.domain.generation import GenerationRequest, SamplingOptions
from circuit_serve.http.status import HttpError, bad_field

# Fields of vLLM's request models that this server refuses when set to anything but their default.
_UNSERVED = (
    "echo",
    "suffix",
    "logit_bias",
    "frequency_penalty",
    "presence_penalty",
    "use_beam_search",
    "tools",
    "prompt_logprobs",
    "min_p",
    "repetition_penalty",
    "min_tokens",
    "stop_token_ids",
    "bad_words",
    "allowed_token_ids",
    "structured_outputs",
    "logprob_token_ids",
    "prompt_embeds",
)


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    layer: int
    index: int
    threshold: float = 0.0
    action: str = "record"


class _Circuit(BaseModel):
    """The `circuit` extension of a request body."""

    model_config = ConfigDict(extra="forbid")
    watch: list[_Rule] = []
    monitor: bool = False
    monitor_values: bool = False


@dataclass(frozen=True)
class OpenAICall:
    """One parsed completions or chat completions request."""

    chat: bool
    request: GenerationRequest  # watch not yet resolved
    ask: MonitorAsk
    model: str | None
    stream: bool
    include_usage: bool
    logprobs: bool
    token_ids: bool = False  # vLLM's `return_token_ids`: the completion's token ids in each choice
    params: dict[str, str] = field(default_factory=dict)  # domain field -> OpenAI field (error `param`)


def _validated(model: type[BaseModel], body: Any) -> Any:
    if not isinstance(body, dict):
        raise HttpError(400, "the request body must be a JSON object", "invalid_request_error")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise HttpError(400, f"{param}: {first['msg']}", "invalid_request_error", param, "invalid_request") from None
    except VLLMValidationError as exc:
        param = getattr(exc, "parameter", None)
        raise HttpError(400, str(exc), "invalid_request_error", param, "invalid_request") from None


def _refuse_unserved(req: BaseModel) -> None:
    n = getattr(req, "n", 1)
    if n not in (1, None):
        raise bad_field("n", f"is {n}; this server returns one choice per request (n = 1): send n requests")
    fields = type(req).model_fields
    for name in _UNSERVED:
        if name not in req.model_fields_set or name not in fields:
            continue
        value = getattr(req, name)
        if value in (None, [], {}, fields[name].default):
            continue
        raise bad_field(name, f"is not supported by this server (got {value!r}); leave it out")
    fmt = getattr(req, "response_format", None)
    if fmt is not None and getattr(fmt, "type", "text") != "text":
        raise bad_field("response_format", "only {'type': 'text'} is supported by this server")


def _ask(body: dict) -> MonitorAsk:
    raw = body.get("circuit")
    if raw is None:
        return MonitorAsk()
    ext = _validated(_Circuit, raw) if isinstance(raw, dict) else None
    if ext is None:
        raise bad_field("circuit", "must be an object: {'watch': [...], 'monitor': bool, 'monitor_values': bool}")
    rules = []
    for i, r in enumerate(ext.watch):
        try:
            action = Action(r.action.lower())
        except ValueError:
            raise bad_field("circuit.watch", f"[{i}].action is {r.action!r}; use record, flag or stop") from None
        if action is Action.STEER:  # its interventions travel only on gRPC
            raise bad_field(
                "circuit.watch",
                f"[{i}].action steer is served on gRPC Generate only (its interventions); use record, flag or stop",
            )
        rules.append(WatchedFeature(r.name, FeatureRef(r.layer, r.index), r.threshold, action))
    return MonitorAsk(monitor=ext.monitor, rules=tuple(rules), values=ext.monitor_values)


def _stop(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)


def _sampling(req: Any, max_tokens: int | None, top_logprobs: int | None, default_max: int) -> SamplingOptions:
    return SamplingOptions(
        max_new_tokens=default_max if max_tokens is None else max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=req.top_k or 0,
        seed=req.seed,
        stop=_stop(req.stop),
        ignore_eos=bool(req.ignore_eos),
        top_logprobs=top_logprobs,
    )


_COMMON = {
    "sampling.temperature": "temperature",
    "sampling.top_p": "top_p",
    "sampling.top_k": "top_k",
    "sampling.stop": "stop",
    "sampling": "temperature",
    "watch": "circuit.watch",
}


def parse_completion(body: Any, *, default_max_tokens: int) -> OpenAICall:
    """`POST /v1/completions`: one prompt (text or token ids); `logprobs` is the number of alternatives."""
    req = _validated(CompletionRequest, body)
    _refuse_unserved(req)
    prompt = req.prompt
    text, ids = None, None
    if isinstance(prompt, str):
        text = prompt
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        ids = tuple(prompt)
    elif isinstance(prompt, list) and len(prompt) == 1:
        text, ids = (prompt[0], None) if isinstance(prompt[0], str) else (None, tuple(prompt[0]))
    elif prompt is not None and prompt != []:
        raise bad_field("prompt", "give one prompt per request (a string or a list of token ids)")
    max_tokens = req.max_tokens if "max_tokens" in req.model_fields_set else 16
    sampling = _sampling(req, max_tokens, req.logprobs, default_max_tokens)
    params = {
        **_COMMON,
        "prompt_token_ids": "prompt",
        "sampling.max_new_tokens": "max_tokens",
        "top_logprobs": "logprobs",
    }
    return OpenAICall(
        chat=False,
        request=GenerationRequest(prompt=text, prompt_token_ids=ids, sampling=sampling),
        ask=_ask(body),
        model=req.model,
        stream=bool(req.stream),
        include_usage=bool(req.stream_options and req.stream_options.include_usage),
        logprobs=req.logprobs is not None,
        token_ids=bool(req.return_token_ids),
        params=params,
    )


def _content(i: int, content: Any) -> str:
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    parts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") != "text":
            raise bad_field("messages", f"message {i}: only text content is supported")
        parts.append(str(part.get("text", "")))
    return "".join(parts)


def parse_chat(body: Any, *, default_max_tokens: int) -> OpenAICall:
    """`POST /v1/chat/completions`: messages rendered with the model's chat template."""
    req = _validated(ChatCompletionRequest, body)
    _refuse_unserved(req)
    messages = tuple(
        ChatMessage(str(m.get("role", "")), _content(i, m.get("content"))) for i, m in enumerate(req.messages)
    )
    if req.max_completion_tokens is not None:
        max_tokens, name = req.max_completion_tokens, "max_completion_tokens"
    else:
        max_tokens, name = req.max_tokens, "max_tokens"
    top = (req.top_logprobs or 0) if req.logprobs else None
    if not req.logprobs and req.top_logprobs:
        raise bad_field("top_logprobs", "needs logprobs: true")
    params = {**_COMMON, "sampling.max_new_tokens": name, "top_logprobs": "top_logprobs"}
    return OpenAICall(
        chat=True,
        request=GenerationRequest(messages=messages, sampling=_sampling(req, max_tokens, top, default_max_tokens)),
        ask=_ask(body),
        model=req.model,
        stream=bool(req.stream),
        include_usage=bool(req.stream_options and req.stream_options.include_usage),
        logprobs=bool(req.logprobs),
        token_ids=bool(getattr(req, "return_token_ids", False)),
        params=params,
    )
