"""Engine statistics as plain data, taken from vLLM's per-step stats.

vLLM reports each engine step to its stat loggers (scheduler state, token counts,
latencies of the requests that got tokens or finished in that step). The adapter
below turns one report into a `StepStats` and hands it to a sink (the metrics
exporter); nothing here knows Prometheus.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class FinishedStats:
    finish_reason: str  # "stop", "length", "abort", "error", ...
    e2e_s: float  # arrival to last token
    queue_s: float  # arrival to first scheduled
    prefill_s: float
    decode_s: float
    prompt_tokens: int
    generation_tokens: int


@dataclass
class StepStats:
    running: int | None = None  # None: this report had no scheduler state
    waiting: int | None = None
    prompt_tokens: int = 0  # prompt tokens prefilled in this step
    generation_tokens: int = 0
    ttft_s: list[float] = field(default_factory=list)
    inter_token_s: list[float] = field(default_factory=list)
    finished: list[FinishedStats] = field(default_factory=list)


StatsSink = Callable[[StepStats], None]


def stat_logger_factory(sink: StatsSink) -> type:
    """A vLLM stat logger class that forwards every step to `sink`.

    It subclasses vLLM's Prometheus logger only so that vLLM does not also start its
    own one, which would fill the global prometheus_client registry (ours is passed in)
    and cost a second set of metric updates per token; none of its code runs.
    """
    from vllm.v1.metrics.loggers import PrometheusStatLogger

    class _Forward(PrometheusStatLogger):
        def __init__(self, vllm_config: Any, engine_indexes: list[int] | None = None) -> None:
            self.engine_indexes = engine_indexes or [0]

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0) -> None:
            sink(to_step_stats(scheduler_stats, iteration_stats))

        def record_admission_rejection(self, reason: str) -> None:
            pass

        def record_sleep_state(self, sleep: int = 0, level: int = 0) -> None:
            pass

        def log_engine_initialized(self) -> None:
            pass

        def log(self) -> None:
            pass

    return _Forward


def to_step_stats(scheduler_stats: Any, iteration_stats: Any) -> StepStats:
    step = StepStats()
    if scheduler_stats is not None:
        step.running = scheduler_stats.num_running_reqs
        step.waiting = scheduler_stats.num_waiting_reqs
    if iteration_stats is not None:
        step.prompt_tokens = iteration_stats.prompt_token_stats.computed
        step.generation_tokens = iteration_stats.num_generation_tokens
        step.ttft_s = list(iteration_stats.time_to_first_tokens_iter)
        step.inter_token_s = list(iteration_stats.inter_token_latencies_iter)
        step.finished = [
            FinishedStats(
                finish_reason=str(f.finish_reason),
                e2e_s=f.e2e_latency,
                queue_s=f.queued_time,
                prefill_s=f.prefill_time,
                decode_s=f.decode_time,
                prompt_tokens=f.num_prompt_tokens,
                generation_tokens=f.num_generation_tokens,
            )
            for f in iteration_stats.finished_requests
        ]
    return step
