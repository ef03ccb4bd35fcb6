"""circuit.v1.Features and monitor reports: protobuf <-> features domain objects."""

from __future__ import annotations

from collections.abc import Sequence

from circuit_proto.v1 import features_pb2 as pb
from circuit_proto.v1 import monitor_pb2 as mpb
from circuit_serve.domain.errors import InvalidRequest
from circuit_serve.domain.features import FeatureRef, Intervention, MonitorReport, Op
from circuit_serve.features.engine import PositionActivations, SteerQuery, TokensInput
from circuit_serve.features.steering import Completion, Sampling, SteerResult
from circuit_serve.rpc.convert_chat import messages_from_pb

_OPS = {pb.INTERVENTION_OP_SET: Op.SET, pb.INTERVENTION_OP_SCALE: Op.SCALE, pb.INTERVENTION_OP_ADD: Op.ADD}


def tokens_input(prompt: str, token_ids: Sequence[int], messages=()) -> TokensInput:
    return TokensInput(prompt=prompt or None, token_ids=tuple(token_ids) or None, messages=messages_from_pb(messages))


def feature_refs(refs: Sequence[pb.FeatureRef]) -> list[FeatureRef]:
    return [FeatureRef(r.layer, r.index) for r in refs]


def activations_to_pb(rows: list[PositionActivations]) -> pb.FeatureActivationsResponse:
    return pb.FeatureActivationsResponse(
        positions=[
            pb.PositionActivations(
                position=r.position,
                token_id=r.token_id,
                token=r.token,
                features=[
                    pb.FeatureValue(
                        layer=v.feature.layer, index=v.feature.index, activation=v.activation, label=v.label
                    )
                    for v in r.values
                ],
            )
            for r in rows
        ]
    )


def interventions_from_pb(items: Sequence[pb.Intervention], field: str = "interventions") -> tuple[Intervention, ...]:
    """Interventions of a Steer or Generate request or a steer rule (InvalidRequest naming the entry's field)."""
    interventions = []
    for i, iv in enumerate(items):
        if iv.op not in _OPS:
            raise InvalidRequest("must be SET, SCALE or ADD", field=f"{field}[{i}].op")
        if not iv.HasField("feature"):
            raise InvalidRequest("is missing", field=f"{field}[{i}].feature")
        interventions.append(
            Intervention(
                FeatureRef(iv.feature.layer, iv.feature.index),
                _OPS[iv.op],
                iv.value,
                tuple(iv.positions),
                iv.generated_tokens,
                iv.all_prompt_positions,
            )
        )
    return tuple(interventions)


def interventions_to_pb(items: Sequence[Intervention]) -> list[pb.Intervention]:
    ops = {op: code for code, op in _OPS.items()}
    return [
        pb.Intervention(
            feature=pb.FeatureRef(layer=iv.feature.layer, index=iv.feature.index),
            op=ops[iv.op],
            value=iv.value,
            positions=iv.positions,
            generated_tokens=iv.generated,
            all_prompt_positions=iv.all_prompt,
        )
        for iv in items
    ]


def steer_query(request: pb.SteerRequest) -> SteerQuery:
    interventions = interventions_from_pb(request.interventions)
    sampling = Sampling(
        max_new_tokens=request.max_new_tokens if request.HasField("max_new_tokens") else 16,
        temperature=request.temperature,
        top_p=request.top_p if request.HasField("top_p") else 1.0,
        seed=request.seed if request.HasField("seed") else None,
    )
    given = tokens_input(request.prompt, request.prompt_token_ids, request.messages)
    return SteerQuery(given, interventions, sampling, request.include_default)


def _completion(c: Completion) -> pb.Completion:
    return pb.Completion(text=c.text, token_ids=c.token_ids)


def steer_to_pb(result: SteerResult) -> pb.SteerResponse:
    out = pb.SteerResponse(prompt_token_ids=result.prompt_token_ids, steered=_completion(result.steered))
    if result.default is not None:
        out.default.CopyFrom(_completion(result.default))
    return out


def monitor_report_to_pb(report: MonitorReport) -> mpb.MonitorReport:
    return mpb.MonitorReport(
        features=[
            mpb.WatchedFeatureReport(
                name=r.watched.name,
                layer=r.watched.feature.layer,
                index=r.watched.feature.index,
                label=r.watched.label,
                threshold=r.watched.threshold,
                action=r.watched.action.value,
                max_activation=r.max_activation,
                completion_positions=r.completion_positions,
                prompt_positions=r.prompt_positions,
                fired=r.fired,
                steered_from=r.steered_from,
            )
            for r in report.features
        ],
        flagged=report.flagged,
        stopped_by=report.stopped_by or "",
    )
