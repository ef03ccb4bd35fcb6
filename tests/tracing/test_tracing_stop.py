"""The stop flag is polled often enough for a cancelled or deadlined graph to stop within a fraction
of a second, in every phase.

The attribution service's deadline test (tests/attribution_service/test_resilience.py) needs the
worker free within 1 s of a deadline on a loaded 2-core machine. Measured here without that
timing noise: the CPU time the process spends (all threads) between two consecutive polls of
`should_stop`, on the graph shape of that test (3.9k active features, all in one batch of rows) and
on the streamed rows (spilled to disk) with head loadings. The bound, 0.5 CPU s, is about 3x what
these graphs take between polls now; before the transposed pass polled per slice of rows, the
largest stretch was 1.07 CPU s (one layer's attention transpose of 3.9k rows, measured with the
same shape).
"""

from __future__ import annotations

import time

import pytest
import torch

from circuit_serve.domain.errors import Cancelled
from circuit_serve.tracing import ReplacementModel

LONG_PROMPT = " ".join(["The quick brown fox jumps over the lazy dog."] * 6)  # 61 tokens
MAX_CPU_BETWEEN_POLLS = 0.5


@pytest.fixture(scope="module")
def rm(tmp_path_factory):
    from circuit_serve.demo import build_demo_model
    from circuit_serve.demo.random_transcoders import write_random_transcoders

    d = tmp_path_factory.mktemp("stop")
    model = build_demo_model(d / "llama", random_weights=True, seed=0)
    tcs = write_random_transcoders(model, d / "tc", d_transcoder=256, seed=0)
    return ReplacementModel.from_pretrained(model, tcs, memory_budget_bytes=2 << 30)


class Polls:
    """should_stop that records the process CPU time of each poll and the phase it came in;
    `stop_in` a phase prefix: answer True from the first poll in that phase on."""

    def __init__(self, stop_in: str | None = None) -> None:
        self.times: list[float] = [time.process_time()]
        self.phase = ""
        self.phases: set[str] = set()
        self.stop_in = stop_in
        self.stopped_at: float | None = None

    def progress(self, phase: str, fraction: float) -> None:
        self.phase = phase

    def __call__(self) -> bool:
        self.times.append(time.process_time())
        self.phases.add(self.phase.split(" ")[0])
        if self.stop_in is not None and self.phase.startswith(self.stop_in):
            self.stopped_at = self.stopped_at or time.process_time()
            return True
        return False

    def largest_gap(self) -> float:
        t = torch.tensor(self.times + [time.process_time()], dtype=torch.float64)
        return float((t[1:] - t[:-1]).max())


@pytest.mark.parametrize(
    "kw",
    [
        dict(max_feature_nodes=4096, batch_size=4096),  # every feature row in one batch (dense rows)
        dict(max_feature_nodes=256, batch_size=64, dense_rows=False, head_loadings=True),
    ],
    ids=["one-batch", "streamed-heads"],
)
def test_cpu_time_between_polls_is_bounded(rm, kw, monkeypatch):
    if kw.get("dense_rows") is False:
        monkeypatch.setattr(rm, "row_memory_bytes", lambda *a: 0)  # every row block spilled to disk
    polls = Polls()
    graph = rm.attribute(LONG_PROMPT, should_stop=polls, progress=polls.progress, **kw)
    assert graph.n_active > 3000
    expected = {"1", "2", "4", "5"} | ({"7"} if kw.get("head_loadings") else set())
    assert expected <= polls.phases
    assert polls.largest_gap() < MAX_CPU_BETWEEN_POLLS, f"{polls.largest_gap():.3f} CPU s between two polls"


@pytest.mark.parametrize("phase", ["4", "5", "7"])
def test_a_stop_in_each_phase_raises_cancelled_at_once(rm, phase):
    polls = Polls(stop_in=phase)
    with pytest.raises(Cancelled):
        rm.attribute(
            LONG_PROMPT,
            max_feature_nodes=256,
            batch_size=64,
            dense_rows=False,
            head_loadings=True,
            should_stop=polls,
            progress=polls.progress,
        )
    assert polls.stopped_at is not None
    assert time.process_time() - polls.stopped_at < MAX_CPU_BETWEEN_POLLS
