"""The generation engine's view of in-engine monitoring: two small protocols, no implementation.

`circuit_serve.monitoring.monitor.EngineMonitor` implements them; the generation engine calls
them and imports nothing of monitoring. For one generation request the engine:

1. `RequestMonitor.begin`: asks the monitor to resolve the request's watch and start it (None:
   the request is not monitored);
2. gives vLLM the request with `WatchedRequest.sampling_overrides` applied and its `cache_salt`
   (when it has one: the monitor decides which of vLLM's cached prompt blocks it may reuse);
3. `WatchedRequest.step`: passes every chunk but the last through it (values of the positions
   computed so far, when the request asked for them);
4. `WatchedRequest.finish`: passes the last chunk through it, which cuts the completion at a
   rule that fired (or at the asked length) and adds the report;
5. `WatchedRequest.close`: always, when the request ends (finished, aborted or failed).

Before vLLM starts, `RequestMonitor.start` readies the monitor (and the process environment
vLLM reads) and `engine_args` adds what vLLM needs to run the monitor in its forward pass; once
vLLM runs, `engine_ready` tells it vLLM's KV block size and whether prefix caching is on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from circuit_serve.domain.generation import GenerationChunk, GenerationRequest

Decode = Callable[[Sequence[int]], str]  # token ids -> text, as the served tokenizer decodes them


class WatchedRequest(Protocol):
    """One monitored generation request, as the engine drives it (steps 2 to 5 above)."""

    @property
    def cache_salt(self) -> str | None:
        """vLLM's `cache_salt` for the request (None: none; a salt limits which cached blocks it reuses)."""
        ...

    def sampling_overrides(self, ignore_eos: bool) -> dict[str, Any]:
        """Changes to the request's vLLM `SamplingParams` fields."""
        ...

    def step(self, chunk: GenerationChunk) -> GenerationChunk:
        """A chunk before the last, with the watched values computed since the previous chunk."""
        ...

    async def finish(self, chunk: GenerationChunk, tokens: list[int], text: list[str]) -> GenerationChunk:
        """The last chunk, cut where monitoring ends the completion, with its report; `tokens`
        and `text` (the whole completion so far: ids, and text pieces by chunk) are cut in place."""
        ...

    def close(self) -> None:
        """Give back what the request holds (idempotent)."""
        ...


class RequestMonitor(Protocol):
    """The monitor the generation engine is started with."""

    max_request_watch: int  # most watched features one request may add
    compiled: bool  # vLLM compiles the layers: steered requests are refused (set by `engine_args`)

    async def start(self) -> None: ...

    def engine_ready(self, *, block_size: int, prefix_caching: bool) -> None:
        """vLLM started with KV blocks of `block_size` tokens, prefix caching on or off."""
        ...

    def engine_args(self, kwargs: Mapping[str, Any], *, enforce_eager: bool) -> dict[str, Any]:
        """`kwargs` (vLLM `AsyncEngineArgs` fields) with the monitor's additions."""
        ...

    def begin(
        self,
        request_id: str,
        request: GenerationRequest,
        *,
        prompt_ids: Sequence[int],
        max_model_len: int,
        sentinel: int | None,
        decode: Decode,
    ) -> WatchedRequest | None:
        """The request's watch resolved and started (None: `request` has no watch)."""
        ...

    def shutdown(self) -> None: ...
