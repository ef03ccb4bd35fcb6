"""Domain types of the attribution service (no protobuf): requests, the engine contract, events."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from circuit_serve.domain.chat import ChatMessage
from circuit_serve.jobs.events import Computed, Progress, ShouldStop
from circuit_serve.tracing.settings import AttributionSettings
from circuit_serve.tracing.targets import Contrast

# Section names of a cached graph entry.
GRAPH_PROTO = "graph.pb"  # serialized circuit.v1.Graph
GRAPH_JSON = "graph.json"  # frontend JSON (UTF-8)

Target = int | Contrast


@dataclass(frozen=True)
class AttributionInput:
    """Exactly one of: a prompt, token ids, or a served completion's request id + token index."""

    prompt: str | None = None
    token_ids: tuple[int, ...] | None = None
    request_id: str | None = None
    token_index: int | None = None
    messages: tuple[ChatMessage, ...] | None = None  # rendered with the model's chat template


@dataclass(frozen=True)
class AttributeRequest:
    input: AttributionInput
    settings: AttributionSettings
    targets: tuple[Target, ...] | None = None  # None: the most probable next tokens
    background: bool = False  # finish (and cache) the graph even if every caller leaves
    job_class: str = ""  # fleet queue class ("": interactive, or background when `background`)


@dataclass(frozen=True, slots=True)
class Accepted:
    """First event of an Attribute stream: the graph's cache key and the tokens it explains."""

    key: str
    token_ids: tuple[int, ...]
    audited_token_id: int | None = None  # the completion token being explained (request_id input)


class GraphEngine(Protocol):
    """What the service needs from the tracing engine (adapted in `attribution.engine`)."""

    model_id: str  # hash of the weights files
    transcoder_id: str  # hash of the transcoder files
    graph_format: int  # version of the serialized sections; part of every key
    vocab_size: int
    max_positions: int
    labels_id: str  # hash of the feature labels written into the JSON ("" when none)

    def tokenize(self, prompt: str) -> list[int]:
        """Token ids exactly as generation tokenizes `prompt` (BOS handling included)."""

    def chat_tokens(self, messages: Sequence[ChatMessage]) -> list[int]:
        """Token ids of chat messages exactly as generation renders them."""

    def prepare(self, token_ids: Sequence[int]) -> list[int]:
        """The ids the engine will attribute (BOS prepended when the tokenizer does so)."""

    def compute(
        self,
        token_ids: Sequence[int],
        settings: AttributionSettings,
        targets: Sequence[Target] | None,
        progress: Progress,
        should_stop: ShouldStop,
        *,
        slug: str,
    ) -> Computed:
        """Attribute, prune, serialize (GRAPH_PROTO and GRAPH_JSON sections); runs in a worker thread.
        Raises InvalidRequest when the graph would not fit the memory budget."""
