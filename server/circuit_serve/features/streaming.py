"""Monitored generation: watched features over a vLLM stream, with `stop` rules that end it.

The stop bound. When the watchlist has a `stop` rule, tokens are held back and released in
checked groups: each time at least `interval` new tokens have arrived (and at the end) the
watched features are computed over prompt + completion so far, and
- nothing fired: the group is released (one merged delta);
- a `stop` feature fired at completion position p: tokens up to and including p are released,
  the stream ends with finish reason FEATURE_RULE naming the feature, and the vLLM request is
  aborted (tokens vLLM computed after p are discarded).
So no token after the firing token ever reaches the client (the bound is 0 tokens), at the price
of tokens arriving up to `interval` (or more, when vLLM outruns the check) at a time. Without a
`stop` rule nothing is held back: the report is computed once, after the last token.

A `stop` feature that fires on the prompt ends the generation before its first token.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from circuit_serve.features.monitor import Monitor
from circuit_serve.features.types import MonitorReport
from circuit_serve.generation.types import FinishReason, GenerationChunk, GenerationResult, Usage

Offload = Callable[..., Any]  # async (fn, *args) -> fn(*args), off the event loop


@dataclass(frozen=True)
class MonitoredChunk:
    chunk: GenerationChunk
    report: MonitorReport | None = None  # on the last chunk only


async def monitor_stream(
    chunks: AsyncIterator[GenerationChunk],
    *,
    monitor: Monitor,
    prompt_ids: Sequence[int],
    interval: int,
    decode: Callable[[list[int]], str],
    offload: Offload = asyncio.to_thread,
) -> AsyncIterator[MonitoredChunk]:
    """Wrap an engine stream; leaving early (or a stop rule) closes `chunks`, aborting vLLM."""
    if interval < 1:
        raise ValueError(f"interval must be >= 1, got {interval}")
    n_prompt = len(prompt_ids)
    completion: list[int] = []  # every token id received so far
    released = 0  # how many of them the caller has been given
    pending: list[GenerationChunk] = []
    overhead = 0.0

    async def activations():
        nonlocal overhead
        t0 = time.perf_counter()
        acts = await offload(monitor.activations, prompt_ids, list(completion))
        overhead += time.perf_counter() - t0
        return acts

    def finish(report: MonitorReport) -> MonitorReport:
        monitor.observe(report, overhead)
        return report

    async with contextlib.aclosing(chunks) as source:
        async for chunk in source:
            completion.extend(chunk.token_ids)
            if not monitor.has_stop_rules:
                if chunk.finish_reason is None:
                    yield MonitoredChunk(chunk)
                    continue
                yield MonitoredChunk(chunk, finish(monitor.report(await activations(), n_prompt)))
                return

            pending.append(chunk)
            if chunk.finish_reason is None and len(completion) - released < interval:
                continue
            acts = await activations()
            hit = monitor.first_stop(acts, n_prompt, start=released)
            if hit is None:
                group = _merge(pending)
                pending.clear()
                released = len(completion)
                if group.finish_reason is None:
                    yield MonitoredChunk(group)
                    continue
                yield MonitoredChunk(group, finish(monitor.report(acts, n_prompt)))
                return

            keep = max(hit.completion_position + 1, released)  # through the firing token
            group = _merge(pending)
            released_text = decode(completion[:released])
            last = dataclasses.replace(
                group,
                text=decode(completion[:keep])[len(released_text):],
                token_ids=tuple(completion[released:keep]),
                logprobs=group.logprobs[: keep - released],
                finish_reason=FinishReason.FEATURE_RULE,
                stop_sequence=None,
                usage=Usage(n_prompt, keep),
            )
            report = monitor.report(acts[: n_prompt + keep], n_prompt, stopped_by=hit.watched.name)
            yield MonitoredChunk(last, finish(report))
            return  # leaving `async with` closes the source: vLLM aborts the request


async def collect(stream: AsyncIterator[MonitoredChunk]) -> tuple[GenerationResult, MonitorReport]:
    """A monitored stream as one result (the unary Generate path)."""
    parts: list[GenerationChunk] = []
    report = None
    async for item in stream:
        parts.append(item.chunk)
        report = item.report
    last = _merge(parts)
    assert report is not None
    result = last.as_result()
    return result, report


def _merge(chunks: list[GenerationChunk]) -> GenerationChunk:
    """Consecutive deltas as one delta; finish reason, stop sequence and usage of the last."""
    last = chunks[-1]
    if len(chunks) == 1:
        return last
    return dataclasses.replace(
        last,
        text="".join(c.text for c in chunks),
        token_ids=tuple(t for c in chunks for t in c.token_ids),
        logprobs=tuple(lp for c in chunks for lp in c.logprobs),
    )
