"""Watched features over a monitored request: per-position activations -> per-feature reports.

Steps for one request (prompt ids p_0..p_{n-1}, completion ids c_0..c_{m-1}):
1. activations: the replacement model's feature activations of the watched features at every
   position of prompt + completion, `(n + m, n_watched)` - the values the attribution graph of
   those tokens uses (the engine computes them; nothing here re-derives them);
2. per feature: the maximum over all positions, the prompt and completion positions where the
   activation is above the feature's threshold;
3. rules: `flag` and `stop` features that fired mark the report; a `stop` feature's first firing
   position is where a monitored stream ends (see `stop_rule`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from circuit_serve.features.types import Action, FeatureRef, FeatureReport, MonitorReport, WatchedFeature


class ActivationSource(Protocol):
    """What the monitor needs from the engine (an adapter over the replacement model)."""

    def activations(self, token_ids: Sequence[int], features: Sequence[FeatureRef]) -> torch.Tensor:
        """`(n_pos, len(features))` activations of `features` at every position of `token_ids`."""
        ...


class MonitorSink(Protocol):
    """Where finished reports go (the Prometheus exporter in circuit_serve.metrics.features)."""

    def observe(self, report: MonitorReport, overhead_s: float) -> None: ...


@dataclass(frozen=True)
class StopHit:
    """The first firing of a `stop` feature: where generation must end."""

    watched: WatchedFeature
    completion_position: int  # the firing token's index in the completion; -1 when it fired in the prompt


class Monitor:
    """Computes watched features for monitored requests; thread-safe (the source must be too)."""

    def __init__(self, watched: Sequence[WatchedFeature], source: ActivationSource,
                 sink: MonitorSink | None = None) -> None:
        if not watched:
            raise ValueError("a monitor needs at least one watched feature")
        self.watched = tuple(watched)
        self._features = [w.feature for w in self.watched]
        self._thresholds = torch.tensor([w.threshold for w in self.watched], dtype=torch.float32)
        self._stop_columns = [i for i, w in enumerate(self.watched) if w.action is Action.STOP]
        self._source = source
        self._sink = sink

    @property
    def has_stop_rules(self) -> bool:
        return bool(self._stop_columns)

    def activations(self, prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> torch.Tensor:
        """`(n_prompt + n_completion, n_watched)` float32 activations on the CPU."""
        acts = self._source.activations([*prompt_ids, *completion_ids], self._features)
        expected = (len(prompt_ids) + len(completion_ids), len(self._features))
        if tuple(acts.shape) != expected:
            raise RuntimeError(f"activation source returned shape {tuple(acts.shape)}, expected {expected}")
        return acts.detach().to(device="cpu", dtype=torch.float32)

    def first_stop(self, acts: torch.Tensor, n_prompt: int, *, start: int = 0) -> StopHit | None:
        """Earliest firing of a `stop` feature at a position >= n_prompt + start (or in the prompt)."""
        if not self._stop_columns:
            return None
        above = acts[:, self._stop_columns] > self._thresholds[self._stop_columns]  # (n_pos, n_stop)
        above[n_prompt: n_prompt + start] = False  # already checked and released
        hits = above.any(dim=1).nonzero()
        if hits.numel() == 0:
            return None
        pos = int(hits[0, 0])
        column = self._stop_columns[int(above[pos].nonzero()[0, 0])]
        return StopHit(self.watched[column], max(pos - n_prompt, -1))

    def report(self, acts: torch.Tensor, n_prompt: int, *, stopped_by: str | None = None) -> MonitorReport:
        """Per-feature maximum and above-threshold positions of the `(n_pos, n_watched)` activations."""
        above = acts > self._thresholds  # (n_pos, n_watched)
        maxima = acts.max(dim=0).values if acts.shape[0] else torch.zeros(len(self.watched))
        reports = []
        for i, w in enumerate(self.watched):
            positions = above[:, i].nonzero().flatten().tolist()
            reports.append(FeatureReport(
                watched=w,
                max_activation=float(maxima[i]),
                prompt_positions=tuple(p for p in positions if p < n_prompt),
                completion_positions=tuple(p - n_prompt for p in positions if p >= n_prompt),
            ))
        return MonitorReport(tuple(reports), stopped_by=stopped_by)

    def run(self, prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> MonitorReport:
        """The whole report of a finished completion, observed by the sink (for unary use and tests)."""
        t0 = time.perf_counter()
        report = self.report(self.activations(prompt_ids, completion_ids), len(prompt_ids))
        self.observe(report, time.perf_counter() - t0)
        return report

    def observe(self, report: MonitorReport, overhead_s: float) -> None:
        if self._sink is not None:
            self._sink.observe(report, overhead_s)
