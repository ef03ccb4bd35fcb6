"""circuit.v1.Attribution messages <-> the attribution service's domain types."""

from __future__ import annotations

from circuit_proto.v1 import attribution_pb2 as pb
from circuit_serve.attribution.types import Accepted, AttributeRequest, AttributionInput
from circuit_serve.domain.errors import InvalidRequest
from circuit_serve.jobs.events import Queued, Running
from circuit_serve.jobs.status import CancelOutcome, JobStatus
from circuit_serve.rpc.convert_chat import messages_from_pb
from circuit_serve.tracing.settings import AttributionSettings
from circuit_serve.tracing.targets import Contrast

_DEFAULTS = AttributionSettings()
_CLASSES = {
    pb.JOB_CLASS_UNSPECIFIED: "",
    pb.JOB_CLASS_INTERACTIVE: "interactive",
    pb.JOB_CLASS_BACKGROUND: "background",
    pb.JOB_CLASS_BACKFILL: "backfill",
}
_CLASS_PB = {name: number for number, name in _CLASSES.items() if name}
_STATES = {
    "queued": pb.JOB_STATE_QUEUED,
    "running": pb.JOB_STATE_RUNNING,
    "done": pb.JOB_STATE_DONE,
    "failed": pb.JOB_STATE_FAILED,
    "cancelled": pb.JOB_STATE_CANCELLED,
}

# Version of the cached sections (circuit.v1.Graph bytes + frontend JSON); part of every
# graph key and checked on every cache read. Bump it when either serialization changes.
GRAPH_FORMAT = 4  # 2: frontend nodes carry `node_influence`; 3: links may carry `head_loadings`; 4: `qk`


def request_from_pb(msg: pb.AttributeRequest) -> AttributeRequest:
    s = msg.settings
    settings = AttributionSettings(
        max_n_logits=s.max_n_logits if s.HasField("max_n_logits") else _DEFAULTS.max_n_logits,
        desired_logit_prob=s.desired_logit_prob if s.HasField("desired_logit_prob") else _DEFAULTS.desired_logit_prob,
        max_feature_nodes=s.max_feature_nodes if s.HasField("max_feature_nodes") else None,
        batch_size=s.batch_size if s.HasField("batch_size") else _DEFAULTS.batch_size,
        node_threshold=s.node_threshold if s.HasField("node_threshold") else _DEFAULTS.node_threshold,
        edge_threshold=s.edge_threshold if s.HasField("edge_threshold") else _DEFAULTS.edge_threshold,
        head_loadings=s.head_loadings if s.HasField("head_loadings") else _DEFAULTS.head_loadings,
        qk_edges=tuple((e.layer, e.head, e.query_pos, e.key_pos) for e in s.qk_edges),
    )
    targets = tuple(_target(t) for t in s.targets) or None
    given = AttributionInput(
        prompt=msg.prompt or None,
        token_ids=tuple(msg.prompt_token_ids) or None,
        request_id=msg.request_id or None,
        token_index=msg.token_index if msg.HasField("token_index") else None,
        messages=messages_from_pb(msg.messages),
    )
    job_class = _CLASSES.get(msg.job_class)
    if job_class is None:  # proto3 enums are open: any number parses
        known = ", ".join(pb.JobClass.Name(n) for n in _CLASSES)
        raise InvalidRequest(f"{msg.job_class} is not a job class; use one of {known}", field="job_class")
    return AttributeRequest(given, settings, targets, background=msg.background, job_class=job_class)


def _target(msg: pb.AttributionTarget) -> int | Contrast:
    if msg.WhichOneof("target") == "contrast":
        return Contrast(msg.contrast.token_id, msg.contrast.versus_token_id)
    return msg.token_id


def event_to_pb(event: Accepted | Queued | Running, key: str) -> pb.AttributeResponse:
    """Progress events; a Finished result is framed from its bytes by result_wire.py."""
    if isinstance(event, Accepted):
        accepted = pb.AttributeAccepted(key=event.key, token_ids=event.token_ids)
        if event.audited_token_id is not None:
            accepted.audited_token_id = event.audited_token_id
        return pb.AttributeResponse(key=event.key, accepted=accepted)
    if isinstance(event, Queued):
        return pb.AttributeResponse(key=key, queued=pb.AttributeQueued(position=event.position))
    return pb.AttributeResponse(key=key, running=pb.AttributeRunning(phase=event.phase, fraction=event.fraction))


def job_to_pb(status: JobStatus) -> pb.JobStatus:
    return pb.JobStatus(
        key=status.key,
        state=_STATES.get(status.state, pb.JOB_STATE_UNSPECIFIED),
        position=status.position,
        phase=status.phase,
        fraction=status.fraction,
        replica=status.replica,
        reason=status.reason,
        job_class=_CLASS_PB.get(status.job_class, pb.JOB_CLASS_UNSPECIFIED),
        deliveries=status.deliveries,
    )


def cancel_to_pb(outcome: CancelOutcome) -> pb.CancelJobResponse:
    response = pb.CancelJobResponse(cancelled=outcome.cancelled, reason=outcome.reason)
    if outcome.status is not None:
        response.status.CopyFrom(job_to_pb(outcome.status))
    return response
