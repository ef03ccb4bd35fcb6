"""The monitor, monitored streams and their metrics, on activations given by a fake source."""

from __future__ import annotations

import asyncio

import pytest
import torch
from prometheus_client import CollectorRegistry

from circuit_serve.features.monitor import Monitor
from circuit_serve.features.streaming import collect, monitor_stream
from circuit_serve.features.types import Action, FeatureRef, WatchedFeature
from circuit_serve.generation.types import FinishReason, GenerationChunk, Usage
from circuit_serve.metrics.features import FeatureMetrics

PROMPT = [0, 1, 2]


class TableSource:
    """Activation of watched feature (layer, index) at a position = table[token id][column]."""

    def __init__(self, table: dict[int, list[float]]) -> None:
        self.table = table
        self.calls: list[int] = []

    def activations(self, token_ids, features):
        self.calls.append(len(token_ids))
        return torch.tensor([self.table.get(t, [0.0] * len(features)) for t in token_ids])


def watched(action_b: Action = Action.STOP):
    return [
        WatchedFeature("a", FeatureRef(0, 1), 0.5, Action.FLAG, "feature a"),
        WatchedFeature("b", FeatureRef(1, 2), 1.0, action_b),
    ]


# token 2 (prompt) lights a weakly; token 50 lights a; token 60 lights b above its threshold
TABLE = {2: [0.3, 0.0], 50: [0.9, 0.0], 60: [0.1, 2.0]}


def test_report_positions_and_flags():
    monitor = Monitor(watched(Action.RECORD), TableSource(TABLE))
    report = monitor.run(PROMPT, [7, 50, 8, 50, 60])
    a, b = report.features
    assert a.max_activation == pytest.approx(0.9) and a.completion_positions == (1, 3) and a.prompt_positions == ()
    assert b.completion_positions == (4,) and b.fired and b.max_activation == pytest.approx(2.0)
    assert report.flagged  # `a` is a flag feature and fired
    quiet = monitor.run(PROMPT, [7, 8])
    assert not quiet.flagged and not any(r.fired for r in quiet.features)


def test_first_stop_skips_released_positions():
    monitor = Monitor(watched(), TableSource(TABLE))
    acts = monitor.activations(PROMPT, [60, 7, 60])
    assert monitor.first_stop(acts, 3).completion_position == 0
    assert monitor.first_stop(acts, 3, start=1).completion_position == 2
    acts = monitor.activations([0, 60], [7])
    assert monitor.first_stop(acts, 2).completion_position == -1  # fired on the prompt


def chunks(ids, *, per_chunk=1, finish=FinishReason.LENGTH, log=None):
    async def gen():
        try:
            for i in range(0, len(ids), per_chunk):
                part = tuple(ids[i: i + per_chunk])
                last = i + per_chunk >= len(ids)
                yield GenerationChunk(
                    request_id="r", text="".join(f"<{t}>" for t in part), token_ids=part,
                    finish_reason=finish if last else None, usage=Usage(len(PROMPT), len(ids)) if last else None,
                )
                if log is not None:
                    log.append(i + len(part))
        finally:
            if log is not None:
                log.append("closed")
    return gen()


def decode(ids):
    return "".join(f"<{t}>" for t in ids)


def run(stream):
    async def main():
        return [item async for item in stream]
    return asyncio.run(main())


def test_without_stop_rules_chunks_pass_through_and_the_end_carries_the_report():
    registry = CollectorRegistry()
    monitor = Monitor(watched(Action.FLAG), source := TableSource(TABLE), FeatureMetrics(registry, watched()))
    ids = [7, 50, 8, 60, 9]
    out = run(monitor_stream(chunks(ids), monitor=monitor, prompt_ids=PROMPT, interval=2, decode=decode))
    assert [c.chunk.token_ids for c in out] == [(t,) for t in ids]  # nothing held back
    assert all(c.report is None for c in out[:-1])
    report = out[-1].report
    assert out[-1].chunk.finish_reason is FinishReason.LENGTH and report.stopped_by is None and report.flagged
    assert source.calls == [len(PROMPT) + len(ids)]  # one pass, after the last token
    sample = registry.get_sample_value
    assert sample("circuit_watched_feature_fired_total", {"feature": "b", "label": ""}) == 1
    assert sample("circuit_watched_feature_actions_total", {"feature": "a", "label": "feature a", "action": "flag"}) == 1
    assert sample("circuit_watched_feature_max_activation_count", {"feature": "a", "label": "feature a"}) == 1
    assert sample("circuit_monitor_overhead_seconds_count") == 1


@pytest.mark.parametrize("per_chunk", [1, 3])
@pytest.mark.parametrize("interval", [1, 2, 4])
def test_stop_rule_ends_the_stream_at_the_firing_token(per_chunk, interval):
    registry = CollectorRegistry()
    monitor = Monitor(watched(), TableSource(TABLE), FeatureMetrics(registry, watched()))
    ids = [7, 50, 8, 9, 60, 11, 12, 13, 14, 15, 16, 17]
    log: list = []
    out = run(monitor_stream(chunks(ids, per_chunk=per_chunk, log=log), monitor=monitor, prompt_ids=PROMPT,
                             interval=interval, decode=decode))
    delivered = [t for c in out for t in c.chunk.token_ids]
    assert delivered == ids[:5]  # through the firing token (completion position 4), nothing after
    assert "".join(c.chunk.text for c in out) == decode(ids[:5])
    last = out[-1]
    assert last.chunk.finish_reason is FinishReason.FEATURE_RULE and last.report.stopped_by == "b"
    assert last.chunk.usage == Usage(len(PROMPT), 5)
    assert last.report.features[1].completion_positions == (4,)
    assert all(len(c.chunk.token_ids) >= min(interval, 1) for c in out[:-1])
    assert log[-1] == "closed" and max(x for x in log if x != "closed") < len(ids)  # the source was aborted
    assert registry.get_sample_value("circuit_watched_feature_actions_total",
                                     {"feature": "b", "label": "", "action": "stop"}) == 1


def test_stop_rule_on_the_prompt_gives_no_tokens():
    monitor = Monitor(watched(), TableSource(TABLE))
    out = run(monitor_stream(chunks([7, 8, 9]), monitor=monitor, prompt_ids=[0, 60], interval=2, decode=decode))
    assert [t for c in out for t in c.chunk.token_ids] == []
    assert out[-1].report.stopped_by == "b" and out[-1].report.features[1].prompt_positions == (1,)


def test_collect_assembles_a_unary_result():
    monitor = Monitor(watched(), TableSource(TABLE))
    ids = [7, 50, 8, 9]
    result, report = asyncio.run(collect(monitor_stream(chunks(ids, per_chunk=2), monitor=monitor,
                                                         prompt_ids=PROMPT, interval=3, decode=decode)))
    assert result.token_ids == tuple(ids) and result.text == decode(ids)
    assert result.finish_reason is FinishReason.LENGTH and report.stopped_by is None
    assert report.features[0].completion_positions == (1,)
