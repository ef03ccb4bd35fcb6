"""Client of circuit.v1.Attribution: attribution graphs with live progress, and graphs by key.

    from circuit_client import CircuitClient
    from circuit_client.attribution import AttributionClient, AttributionSettings

    with CircuitClient("localhost:50051") as client:
        graphs = AttributionClient(client)
        result = graphs.attribute("The capital of France is", AttributionSettings(max_feature_nodes=512),
                                  on_event=print)
        result.frontend()        # the frontend JSON as a dict
        result.graph             # circuit.v1.Graph
        graphs.get_graph(result.key)

    # audit token 3 of a completion this server served:
    graphs.attribute(request_id=generation.request_id, token_index=3)

    # a graph job, whichever replica of a fleet computes it:
    graphs.get_job(result.key)           # JobStatus(state="done", replica=..., ...)
    for status in graphs.watch_job(key): ...
    graphs.cancel_job(key)               # CancelResult(cancelled=True, ...)

Results larger than the server's chunk size arrive in chunks and are reassembled here
(chunks.py), so a channel with gRPC's default 4 MiB receive limit gets any graph.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from circuit_client._calls import Answer, Each, Items, Stream, Unary
from circuit_client._channel import AsyncServiceClient, ServiceClient
from circuit_client._convert import Messages, chat_messages
from circuit_client.chunks import ResultAssembler
from circuit_client.credentials import Credentials
from circuit_proto.v1 import attribution_pb2 as pb
from circuit_proto.v1 import attribution_pb2_grpc as pb_grpc

DEFAULT_ATTRIBUTION_TIMEOUT_S = 600.0
Output = Literal["both", "proto", "json"]
_OUTPUT = {"both": pb.GRAPH_OUTPUT_BOTH, "proto": pb.GRAPH_OUTPUT_PROTO, "json": pb.GRAPH_OUTPUT_JSON}
JobClass = Literal["", "interactive", "background", "backfill"]
_CLASS = {
    "": pb.JOB_CLASS_UNSPECIFIED,
    "interactive": pb.JOB_CLASS_INTERACTIVE,
    "background": pb.JOB_CLASS_BACKGROUND,
    "backfill": pb.JOB_CLASS_BACKFILL,
}
_CLASS_NAME = {number: name for name, number in _CLASS.items()}
_STATE = {
    pb.JOB_STATE_UNSPECIFIED: "unknown",
    pb.JOB_STATE_QUEUED: "queued",
    pb.JOB_STATE_RUNNING: "running",
    pb.JOB_STATE_DONE: "done",
    pb.JOB_STATE_FAILED: "failed",
    pb.JOB_STATE_CANCELLED: "cancelled",
}


@dataclass(frozen=True)
class AttributionSettings:
    """Unset (None) fields take the server's defaults. A target is a token id or
    a (token, versus) pair meaning "logit(token) - logit(versus)". `head_loadings` splits kept
    edges by attention head (Graph.head_loadings); `qk_edges` lists (layer, head, query_pos,
    key_pos) attention edges whose score the graph splits by the residual components at the
    query and key positions (Graph.qk, the frontend JSON's "qk"; at most 16)."""

    max_n_logits: int | None = None
    desired_logit_prob: float | None = None
    max_feature_nodes: int | None = None
    batch_size: int | None = None
    node_threshold: float | None = None
    edge_threshold: float | None = None
    targets: Sequence[int | tuple[int, int]] = ()
    head_loadings: bool | None = None
    qk_edges: Sequence[tuple[int, int, int, int]] = ()


@dataclass(frozen=True)
class Accepted:
    key: str  # the graph's content address (for get_graph)
    token_ids: tuple[int, ...]  # what the graph explains the continuation of (BOS first)
    audited_token_id: int | None  # with request_id input: the completion token explained


@dataclass(frozen=True)
class Queued:
    key: str
    position: int  # 1 = next


@dataclass(frozen=True)
class Running:
    key: str
    phase: str
    fraction: float


@dataclass(frozen=True)
class GraphResult:
    key: str
    graph: Any | None  # circuit.v1.Graph (circuit_proto.v1.graph_pb2.Graph), when asked for
    frontend_json: bytes  # UTF-8 JSON, when asked for
    source: str  # "cache", "computed" or "replica"

    def frontend(self) -> dict:
        return json.loads(self.frontend_json)

    def save_json(self, path: str) -> None:
        with open(path, "wb") as f:
            f.write(self.frontend_json)


Event = Accepted | Queued | Running | GraphResult


@dataclass(frozen=True)
class JobStatus:
    """A graph job as the fleet knows it (GetJob / WatchJob)."""

    key: str
    state: str  # queued, running, done, failed, cancelled
    position: int  # queued: 1 = next across the fleet
    phase: str
    fraction: float
    replica: str  # who computes (or computed) it
    reason: str  # failed / cancelled: why
    job_class: str  # interactive, background, backfill
    deliveries: int  # times handed to a worker (> 1: a worker died)

    @property
    def final(self) -> bool:
        return self.state in ("done", "failed", "cancelled")


@dataclass(frozen=True)
class CancelResult:
    cancelled: bool
    reason: str  # why not, when not cancelled
    status: JobStatus | None


class AttributionCalls:
    """The calls of circuit.v1.Attribution, written once for both clients (`_calls.py`)."""

    def __init__(
        self,
        target: Any,
        *,
        timeout: float | None = DEFAULT_ATTRIBUTION_TIMEOUT_S,
        retries: int = 3,
        credentials: Credentials | None = None,
    ) -> None:
        super().__init__(target, timeout=timeout, retries=retries, credentials=credentials)  # the driver's

    def stream(
        self,
        prompt: str | None = None,
        settings: AttributionSettings | None = None,
        *,
        prompt_token_ids: Sequence[int] | None = None,
        request_id: str | None = None,
        token_index: int | None = None,
        messages: Messages | None = None,
        output: Output = "both",
        background: bool = False,
        job_class: JobClass = "",
        timeout: float | None = None,
    ) -> Items[Event]:
        """Accepted, then Queued/Running progress, then the GraphResult. Leaving early cancels
        the call (the server stops the work unless `background` or another caller waits).
        `job_class`: the fleet queue it waits in (default interactive, or background)."""
        return self._stream(
            ATTRIBUTE,
            prompt,
            prompt_token_ids,
            request_id,
            token_index,
            settings or AttributionSettings(),
            output,
            background,
            messages,
            job_class,
            timeout=timeout,
        )

    def attribute(
        self,
        prompt: str | None = None,
        settings: AttributionSettings | None = None,
        *,
        on_event: Callable[[Event], None] | None = None,
        **kwargs: Any,
    ) -> Answer[GraphResult]:
        """The finished graph (see `stream` for the arguments); `on_event` sees every event."""
        return self._first(
            self.stream(prompt, settings, **kwargs),
            "the Attribute stream ended without a graph",
            found=lambda event: isinstance(event, GraphResult),
            on_item=on_event,
        )

    def get_graph(self, key: str, *, output: Output = "both", timeout: float | None = None) -> Answer[GraphResult]:
        """A cached graph by key; CircuitRpcError(NOT_FOUND) when it is not (or no longer) cached.

        Uses GetGraphStream (chunked when large, so any receive limit works), or unary GetGraph
        on a server that predates it."""
        return self._first(
            self._stream(GET_GRAPH_STREAM, key, output, timeout=timeout),
            "the GetGraphStream stream ended without a graph",
        )

    def get_job(self, key: str, *, timeout: float | None = None) -> Answer[JobStatus]:
        """The job of graph `key`, on whichever replica; CircuitRpcError(NOT_FOUND) for an unknown key."""
        return self._unary(GET_JOB, key, timeout=timeout)

    def watch_job(self, key: str, *, timeout: float | None = None) -> Items[JobStatus]:
        """The job's status now, then each change, until it is done, failed or cancelled."""
        return self._stream(WATCH_JOB, key, timeout=timeout)

    def cancel_job(self, key: str, *, timeout: float | None = None) -> Answer[CancelResult]:
        """Stop the job at its replica's next stop check, unless another caller waits for it or it
        is a background job (then `cancelled` is False and `reason` says which)."""
        return self._unary(CANCEL_JOB, key, timeout=timeout)


class AttributionClient(AttributionCalls, ServiceClient):
    """`target` is host:port, a grpc.Channel, or a CircuitClient (its channel is shared)."""


class AsyncAttributionClient(AttributionCalls, AsyncServiceClient):
    """asyncio twin of `AttributionClient`; `target` is host:port, a grpc.aio.Channel, or an
    AsyncCircuitClient (its channel is shared)."""


def _request(
    prompt,
    prompt_token_ids,
    request_id,
    token_index,
    s: AttributionSettings,
    output,
    background,
    messages: Messages | None = None,
    job_class: JobClass = "",
):
    settings = pb.AttributionSettings()
    for name in (
        "max_n_logits",
        "desired_logit_prob",
        "max_feature_nodes",
        "batch_size",
        "node_threshold",
        "edge_threshold",
        "head_loadings",
    ):
        value = getattr(s, name)
        if value is not None:
            setattr(settings, name, value)
    for target in s.targets:
        if isinstance(target, (tuple, list)):
            settings.targets.add(contrast=pb.ContrastTarget(token_id=target[0], versus_token_id=target[1]))
        else:
            settings.targets.add(token_id=target)
    for layer, head, query_pos, key_pos in s.qk_edges:
        settings.qk_edges.add(layer=layer, head=head, query_pos=query_pos, key_pos=key_pos)
    req = pb.AttributeRequest(
        prompt=prompt or "",
        prompt_token_ids=list(prompt_token_ids or ()),
        request_id=request_id or "",
        settings=settings,
        output=_OUTPUT[output],
        background=background,
        messages=chat_messages(messages),
        job_class=_CLASS[job_class],
    )
    if token_index is not None:
        req.token_index = token_index
    return req


def _event(msg: pb.AttributeResponse, assembler: ResultAssembler) -> Event | None:
    """The event `msg` completes; None for a result header or chunk before the last one."""
    result = assembler.feed(msg)
    if result is not None:
        return _result(msg.key, result)
    kind = msg.WhichOneof("event")
    if kind == "accepted":
        a = msg.accepted
        return Accepted(a.key, tuple(a.token_ids), a.audited_token_id if a.HasField("audited_token_id") else None)
    if kind == "queued":
        return Queued(msg.key, msg.queued.position)
    if kind == "running":
        return Running(msg.key, msg.running.phase, msg.running.fraction)
    return None


def _result(key: str, r: pb.AttributionResult) -> GraphResult:
    return GraphResult(key, r.graph if r.HasField("graph") else None, bytes(r.frontend_json), r.source)


class _Events:
    """Reader of an Attribute stream: its events, large results reassembled."""

    def __init__(self, _request: pb.AttributeRequest) -> None:
        self._assembler = ResultAssembler()

    def feed(self, msg: pb.AttributeResponse) -> Event | None:
        return _event(msg, self._assembler)

    def done(self) -> None:
        self._assembler.check_done()


class _Graph:
    """Reader of a GetGraphStream stream: the graph of the requested key."""

    def __init__(self, request: pb.GetGraphRequest) -> None:
        self._key = request.key
        self._assembler = ResultAssembler()

    def feed(self, msg: pb.AttributeResponse) -> GraphResult | None:
        result = self._assembler.feed(msg)
        return None if result is None else _result(self._key, result)

    def done(self) -> None:
        self._assembler.check_done()


def _graph_request(key: str, output: Output) -> pb.GetGraphRequest:
    return pb.GetGraphRequest(key=key, output=_OUTPUT[output])


ATTRIBUTE = Stream(pb_grpc.AttributionStub, "Attribute", _request, _Events)
GET_GRAPH = Unary(
    pb_grpc.AttributionStub, "GetGraph", _graph_request, lambda request, msg: _result(request.key, msg.result)
)
GET_GRAPH_STREAM = Stream(pb_grpc.AttributionStub, "GetGraphStream", _graph_request, _Graph, fallback=GET_GRAPH)


def _job(msg: pb.JobStatus) -> JobStatus:
    return JobStatus(
        msg.key,
        _STATE.get(msg.state, "unknown"),
        msg.position,
        msg.phase,
        msg.fraction,
        msg.replica,
        msg.reason,
        _CLASS_NAME.get(msg.job_class, ""),
        msg.deliveries,
    )


def _cancel(msg: pb.CancelJobResponse) -> CancelResult:
    return CancelResult(msg.cancelled, msg.reason, _job(msg.status) if msg.HasField("status") else None)


def _job_request(key: str) -> pb.GetJobRequest:
    return pb.GetJobRequest(key=key)


GET_JOB = Unary(pb_grpc.AttributionStub, "GetJob", _job_request, lambda request, msg: _job(msg))
WATCH_JOB = Stream(pb_grpc.AttributionStub, "WatchJob", _job_request, lambda request: Each(_job))
CANCEL_JOB = Unary(pb_grpc.AttributionStub, "CancelJob", _job_request, lambda request, msg: _cancel(msg))
