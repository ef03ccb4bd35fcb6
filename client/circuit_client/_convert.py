"""Protobuf <-> the client's dataclasses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from circuit_client import monitor
from circuit_client import monitor as monitor_types
from circuit_client.interventions import Intervention, interventions_from_pb, interventions_pb
from circuit_client.types import (
    ChatMessage,
    FinishReason,
    Generation,
    ModelInfo,
    Sampling,
    StreamChunk,
    Tokenization,
    TokenLogprob,
    TopLogprob,
    TranscoderSet,
    Usage,
)
from circuit_proto.v1 import chat_pb2 as chat_pb
from circuit_proto.v1 import generation_pb2 as pb
from circuit_proto.v1 import monitor_pb2 as mpb

Messages = Sequence[ChatMessage | tuple[str, str] | Mapping[str, str]]

_FINISH = {
    pb.FINISH_REASON_UNSPECIFIED: FinishReason.UNSPECIFIED,
    pb.FINISH_REASON_STOP: FinishReason.STOP,
    pb.FINISH_REASON_LENGTH: FinishReason.LENGTH,
    pb.FINISH_REASON_ABORT: FinishReason.ABORT,
    pb.FINISH_REASON_FEATURE_RULE: FinishReason.FEATURE_RULE,
}


def chat_messages(messages: Messages | None) -> list[chat_pb.ChatMessage]:
    """ChatMessage / (role, content) / {"role", "content"} items -> circuit.v1.ChatMessage."""
    out = []
    for m in messages or ():
        if isinstance(m, dict):
            role, content = m["role"], m["content"]
        elif isinstance(m, ChatMessage):
            role, content = m.role, m.content
        else:
            role, content = m
        out.append(chat_pb.ChatMessage(role=str(role), content=str(content)))
    return out


def parse_message(text: str) -> ChatMessage:
    """`ROLE:CONTENT` (a command-line --message) -> ChatMessage; ValueError without a role."""
    role, sep, content = text.partition(":")
    if not sep or not role.strip():
        raise ValueError(f"expected ROLE:CONTENT (e.g. 'user:Hello'), got {text!r}")
    return ChatMessage(role.strip(), content.lstrip())


def generate_request(
    prompt: str | None,
    prompt_token_ids: list[int] | tuple[int, ...] | None,
    sampling: Sampling,
    monitor: bool | monitor.Monitoring = False,
    messages: Messages | None = None,
    interventions: Sequence[Intervention] = (),
    steering_preset: str = "",
    skip_default_steering: bool = False,
) -> pb.GenerateRequest:
    s = pb.SamplingParams(stop=list(sampling.stop), ignore_eos=sampling.ignore_eos)
    for name in ("max_new_tokens", "temperature", "top_p", "top_k", "seed"):
        value = getattr(sampling, name)
        if value is not None:
            setattr(s, name, value)
    req = pb.GenerateRequest(
        prompt=prompt or "",
        prompt_token_ids=list(prompt_token_ids or ()),
        sampling=s,
        monitor=bool(monitor),
        messages=chat_messages(messages),
        interventions=interventions_pb(interventions),
        steering_preset=steering_preset,
        skip_default_steering=skip_default_steering,
    )
    if isinstance(monitor, monitor_types.Monitoring):
        req.watch.extend(
            mpb.WatchRule(
                name=r.name,
                layer=r.layer,
                index=r.index,
                threshold=r.threshold,
                action=r.action,
                steer=interventions_pb(r.steer),
                steer_preset=r.steer_preset,
            )
            for r in monitor.rules
        )
        req.monitor_values = monitor.values
    if sampling.top_logprobs is not None:
        req.top_logprobs = sampling.top_logprobs
    return req


def _usage(u: pb.Usage) -> Usage:
    return Usage(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens)


def _logprobs(items) -> tuple[TokenLogprob, ...]:
    return tuple(
        TokenLogprob(
            token_id=t.token_id,
            logprob=t.logprob,
            top=tuple(TopLogprob(token_id=x.token_id, token=x.token, logprob=x.logprob) for x in t.top),
        )
        for t in items
    )


def generation(msg: pb.GenerateResponse) -> Generation:
    return Generation(
        request_id=msg.request_id,
        text=msg.text,
        token_ids=tuple(msg.token_ids),
        finish_reason=_FINISH.get(msg.finish_reason, FinishReason.UNSPECIFIED),
        usage=_usage(msg.usage),
        stop_sequence=msg.stop_sequence or None,
        logprobs=_logprobs(msg.logprobs),
        monitor=monitor.from_pb(msg.monitor) if msg.HasField("monitor") else None,
    )


def stream_chunk(msg: pb.GenerateStreamResponse) -> StreamChunk:
    if msg.WhichOneof("event") == "end":
        end = msg.end
        return StreamChunk(
            request_id=msg.request_id,
            finish_reason=_FINISH.get(end.finish_reason, FinishReason.UNSPECIFIED),
            stop_sequence=end.stop_sequence or None,
            usage=_usage(end.usage),
            monitor=monitor.from_pb(end.monitor) if end.HasField("monitor") else None,
            activations=_activations(end.activations),
        )
    d = msg.delta
    if not d.logprobs and not d.activations:  # the common delta, once a token: no empty conversions
        return StreamChunk(request_id=msg.request_id, text=d.text, token_ids=tuple(d.token_ids))
    return StreamChunk(
        request_id=msg.request_id,
        text=d.text,
        token_ids=tuple(d.token_ids),
        logprobs=_logprobs(d.logprobs),
        activations=_activations(d.activations),
    )


def _activations(items) -> tuple[monitor_types.WatchedValues, ...]:
    return tuple(monitor_types.WatchedValues(v.position, tuple(v.values)) for v in items)


def tokenization(msg: pb.TokenizeResponse) -> Tokenization:
    return Tokenization(token_ids=tuple(msg.token_ids), tokens=tuple(msg.tokens))


def model_info(msg: pb.ModelInfoResponse) -> ModelInfo:
    tc = msg.transcoders if msg.HasField("transcoders") else None
    return ModelInfo(
        model_name=msg.model_name,
        model_path=msg.model_path,
        architecture=msg.architecture,
        max_model_len=msg.max_model_len,
        vocab_size=msg.vocab_size,
        dtype=msg.dtype,
        server_version=msg.server_version,
        max_new_tokens_limit=msg.max_new_tokens_limit,
        max_top_logprobs=msg.max_top_logprobs,
        max_request_watch=msg.max_request_watch,
        transcoders=TranscoderSet(
            tc.name,
            tc.path,
            tc.kind,
            tc.num_layers,
            tc.features_per_layer,
            revision=tc.revision,
            feature_input_hook=tc.feature_input_hook,
            feature_output_hook=tc.feature_output_hook,
            activation=tc.activation,
            top_k=tc.top_k,
            dtype=tc.dtype,
            lazy_decoder=tc.lazy_decoder,
            skip_connection=tc.skip_connection,
            d_model=tc.d_model,
        )
        if tc
        else None,
        limits={f.name: v for f, v in msg.limits.ListFields()} if msg.HasField("limits") else {},
        steering_presets={p.name: interventions_from_pb(p.interventions) for p in msg.steering_presets},
        steering_default=msg.steering_default or None,
    )
