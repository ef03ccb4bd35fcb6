"""Generation metrics, named after vLLM's (`vllm:x` -> `circuit_x`), fed from engine step stats."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from circuit_serve.domain.generation import EngineLoad
from circuit_serve.generation.stats import StepStats

# Buckets as in vLLM's Prometheus logger, trimmed to what a single server sees.
_TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
_ITL_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
)
_REQUEST_BUCKETS = (
    0.01,
    0.05,
    0.1,
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
)
FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")


class GenerationMetrics:
    """Gauges read the engine's load at scrape time (`track_load`); the rest is fed by `observe_step`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.running = Gauge(
            "circuit_num_requests_running", "Requests in the model's running batch.", registry=registry
        )
        self.waiting = Gauge("circuit_num_requests_waiting", "Requests queued for the model.", registry=registry)

        self.prompt_tokens = Counter("circuit_prompt_tokens", "Prompt tokens prefilled.", registry=registry)
        self.generation_tokens = Counter("circuit_generation_tokens", "Tokens generated.", registry=registry)
        finished = Counter(
            "circuit_request_success", "Finished requests by finish reason.", ["finished_reason"], registry=registry
        )
        self.finished = {reason: finished.labels(reason) for reason in FINISH_REASONS}
        self._finished_family = finished

        def hist(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, buckets=buckets, registry=registry)

        self.ttft = hist("circuit_time_to_first_token_seconds", "Arrival to first generated token.", _TTFT_BUCKETS)
        self.inter_token = hist("circuit_inter_token_latency_seconds", "Time between generated tokens.", _ITL_BUCKETS)
        self.e2e = hist("circuit_e2e_request_latency_seconds", "Arrival to last token.", _REQUEST_BUCKETS)
        self.queue = hist(
            "circuit_request_queue_time_seconds", "Time waiting before first scheduled.", _REQUEST_BUCKETS
        )
        self.prefill = hist("circuit_request_prefill_time_seconds", "Time in prefill.", _REQUEST_BUCKETS)
        self.decode = hist("circuit_request_decode_time_seconds", "Time in decode.", _REQUEST_BUCKETS)

    def track_load(self, load: Callable[[], EngineLoad]) -> None:
        self.running.set_function(lambda: load().running)
        self.waiting.set_function(lambda: load().waiting)

    def observe_step(self, step: StepStats) -> None:
        if step.prompt_tokens:
            self.prompt_tokens.inc(step.prompt_tokens)
        if step.generation_tokens:
            self.generation_tokens.inc(step.generation_tokens)
        for value in step.ttft_s:
            self.ttft.observe(value)
        for value in step.inter_token_s:
            self.inter_token.observe(value)
        for f in step.finished:
            counter = self.finished.get(f.finish_reason) or self._finished_family.labels(f.finish_reason)
            counter.inc()
            self.e2e.observe(f.e2e_s)
            self.queue.observe(f.queue_s)
            self.prefill.observe(f.prefill_s)
            self.decode.observe(f.decode_s)
