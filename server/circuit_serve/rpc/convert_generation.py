"""Protobuf <-> domain objects for the Generation service (the only place that knows both)."""

from __future__ import annotations

from circuit_proto.v1 import features_pb2 as fpb
from circuit_proto.v1 import generation_pb2 as pb
from circuit_proto.v1 import monitor_pb2 as mpb
from circuit_serve.domain.errors import InvalidRequest
from circuit_serve.domain.features import Action, FeatureRef, MonitorAsk, WatchedFeature, WatchedValues
from circuit_serve.domain.generation import (
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
    ModelDescription,
    SamplingOptions,
    TokenLogprobs,
    Usage,
)
from circuit_serve.features.presets import SteeringPresets
from circuit_serve.rpc.convert_chat import messages_from_pb
from circuit_serve.rpc.convert_features import interventions_from_pb, interventions_to_pb, monitor_report_to_pb

_FINISH = {
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.ABORT: pb.FINISH_REASON_ABORT,
    FinishReason.FEATURE_RULE: pb.FINISH_REASON_FEATURE_RULE,
}


def request_from_pb(msg: pb.GenerateRequest) -> GenerationRequest:
    s = msg.sampling
    defaults = SamplingOptions()
    sampling = SamplingOptions(
        max_new_tokens=s.max_new_tokens if s.HasField("max_new_tokens") else defaults.max_new_tokens,
        temperature=s.temperature if s.HasField("temperature") else defaults.temperature,
        top_p=s.top_p if s.HasField("top_p") else defaults.top_p,
        top_k=s.top_k if s.HasField("top_k") else defaults.top_k,
        seed=s.seed if s.HasField("seed") else None,
        stop=tuple(s.stop),
        ignore_eos=s.ignore_eos,
        top_logprobs=msg.top_logprobs if msg.HasField("top_logprobs") else None,
    )
    return GenerationRequest(
        prompt=msg.prompt or None,
        prompt_token_ids=tuple(msg.prompt_token_ids) or None,
        sampling=sampling,
        messages=messages_from_pb(msg.messages),
        interventions=interventions_from_pb(msg.interventions),
        steering_preset=msg.steering_preset,
        skip_default_steering=msg.skip_default_steering,
    )


def monitor_ask(msg: pb.GenerateRequest) -> MonitorAsk:
    """What the request asks of monitoring (checked later by the features service)."""
    rules = []
    for i, r in enumerate(msg.watch):
        try:
            action = Action((r.action or "record").lower())
        except ValueError:
            raise InvalidRequest(
                f"watch[{i}].action is {r.action!r}; use record, flag, stop or steer", field="watch"
            ) from None
        steer = interventions_from_pb(r.steer, field=f"watch[{i}].steer")
        rules.append(
            WatchedFeature(
                r.name, FeatureRef(r.layer, r.index), r.threshold, action, steer=steer, steer_preset=r.steer_preset
            )
        )
    return MonitorAsk(monitor=msg.monitor, rules=tuple(rules), values=msg.monitor_values)


def _activations(items: tuple[WatchedValues, ...]) -> list[mpb.WatchedValues]:
    return [mpb.WatchedValues(position=v.position, values=v.values) for v in items]


def _usage(u: Usage) -> pb.Usage:
    return pb.Usage(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens)


def _logprobs(items: tuple[TokenLogprobs, ...]) -> list[pb.TokenLogprobs]:
    return [
        pb.TokenLogprobs(
            token_id=t.token_id,
            logprob=t.logprob,
            top=[pb.TopLogprob(token_id=tid, token=tok, logprob=lp) for tid, tok, lp in t.top],
        )
        for t in items
    ]


def result_to_pb(r: GenerationResult) -> pb.GenerateResponse:
    out = pb.GenerateResponse(
        request_id=r.request_id,
        text=r.text,
        token_ids=r.token_ids,
        finish_reason=_FINISH[r.finish_reason],
        stop_sequence=r.stop_sequence or "",
        usage=_usage(r.usage),
        logprobs=_logprobs(r.logprobs),
    )
    if r.monitor is not None:
        out.monitor.CopyFrom(monitor_report_to_pb(r.monitor))
    return out


def chunk_to_pb(c: GenerationChunk) -> list[pb.GenerateStreamResponse]:
    """A chunk becomes a delta message (if it has tokens) and, on the last chunk, an end message.

    A chunk holds every token vLLM had ready when the stream asked for the next one (vLLM merges the
    deltas that pile up while a message is being written), so one message may carry several tokens.
    Per-message cost counts (one message a token when the client keeps up): the common delta (no
    logprobs, no activations) is built without the empty repeated fields."""
    last = c.finish_reason is not None
    if not last and not c.logprobs and not c.activations:
        if not (c.token_ids or c.text):
            return []
        message = pb.GenerateStreamResponse()
        message.request_id = c.request_id  # assigning fields: about half the time of keyword construction
        message.delta.text = c.text
        message.delta.token_ids.extend(c.token_ids)
        return [message]
    return chunk_to_pb_general(c)


def chunk_to_pb_general(c: GenerationChunk) -> list[pb.GenerateStreamResponse]:
    """`chunk_to_pb` of any chunk, every field converted (bench/stream_messages.py times both)."""
    last = c.finish_reason is not None
    out = []
    if c.token_ids or c.text or (c.activations and not last):
        delta = pb.TokenDelta(
            text=c.text,
            token_ids=c.token_ids,
            logprobs=_logprobs(c.logprobs),
            activations=_activations(c.activations) if not last else (),
        )
        out.append(pb.GenerateStreamResponse(request_id=c.request_id, delta=delta))
    if last:
        assert c.usage is not None
        end = pb.GenerationEnd(
            finish_reason=_FINISH[c.finish_reason],
            stop_sequence=c.stop_sequence or "",
            usage=_usage(c.usage),
            activations=_activations(c.activations),
        )
        if c.monitor is not None:
            end.monitor.CopyFrom(monitor_report_to_pb(c.monitor))
        out.append(pb.GenerateStreamResponse(request_id=c.request_id, end=end))
    return out


def transcoders_to_pb(t: dict) -> pb.TranscoderSetInfo:
    """`TranscoderSet.describe()` -> TranscoderSetInfo."""
    return pb.TranscoderSetInfo(
        name=t["name"],
        path=t.get("path", ""),
        kind={"plt": "transcoder_set", "clt": "cross_layer_transcoder"}[t["kind"]],
        num_layers=t["n_layers"],
        features_per_layer=t["d_transcoder"],
        revision=t["revision"],
        feature_input_hook=t["feature_input_hook"],
        feature_output_hook=t["feature_output_hook"],
        activation=t["activation"],
        top_k=t["top_k"],
        dtype=t["dtype"],
        lazy_decoder=t["lazy_decoder"],
        skip_connection=t["skip"],
        d_model=t["d_model"],
    )


def presets_to_pb(presets: SteeringPresets, info: pb.ModelInfoResponse) -> None:
    """The server's steering presets and default, into `info`."""
    for name, ivs in presets.presets.items():
        info.steering_presets.append(fpb.SteeringPreset(name=name, interventions=interventions_to_pb(ivs)))
    info.steering_default = presets.default or ""


def model_info_to_pb(
    d: ModelDescription, *, server_version: str, transcoders: dict | None = None
) -> pb.ModelInfoResponse:
    return pb.ModelInfoResponse(
        transcoders=transcoders_to_pb(transcoders) if transcoders else None,
        model_name=d.name,
        model_path=d.path,
        architecture=d.architecture,
        max_model_len=d.max_model_len,
        vocab_size=d.vocab_size,
        dtype=d.dtype,
        server_version=server_version,
        max_new_tokens_limit=d.max_new_tokens_limit,
        max_top_logprobs=d.max_top_logprobs,
        max_request_watch=d.max_request_watch,
    )
