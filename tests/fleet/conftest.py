"""Fleets of real `circuit-serve serve` processes sharing a real Redis on loopback.

Attribution-only replicas (`--role attribution`) load no vLLM, so they start in seconds; the
folder has one replica with vLLM (test_fleet.py's `--role all`). Each module has its own key
prefix, so its queue and cache are its own. Short fleet timings: reclaim after 4 s, heartbeat
every 0.5 s, progress/cancel checks every 0.1 s.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from circuit_serve.launch import LaunchedServer, start_server
from circuit_serve.testing.redis_server import RedisServer

TEST_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_LOGGING_LEVEL": "WARNING",
    "TOKENIZERS_PARALLELISM": "false",
}
FAST_FLEET = [
    "--redis-timeout",
    "2",
    "--job-reclaim-after",
    "2",
    "--job-heartbeat",
    "0.5",
    "--job-poll",
    "0.1",
    "--grace-period",
    "3",
]


def metric(server: LaunchedServer, name: str, **labels: str) -> float:
    """One sample of a replica's /metrics (0.0 when absent)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


@dataclass
class Fleet:
    """Replicas on one model, Redis and key prefix; `start` adds one, `servers` by name."""

    model: Path
    transcoders: Path
    redis_url: str
    logs: Path
    flags: list[str] = field(default_factory=list)
    prefix: str = field(default_factory=lambda: f"fleet-{uuid.uuid4().hex[:8]}:")
    servers: dict[str, LaunchedServer] = field(default_factory=dict)

    def start(self, name: str, *flags: str, role: str = "attribution") -> LaunchedServer:
        server = start_server(
            self.model,
            [
                "--role",
                role,
                "--transcoders",
                str(self.transcoders),
                "--redis-url",
                self.redis_url,
                "--redis-prefix",
                self.prefix,
                "--replica-name",
                name,
                "--dtype",
                "float32",
                "--max-model-len",
                "512",
                "--enforce-eager",
                "--kv-cache-gib",
                "1",
                *FAST_FLEET,
                *self.flags,
                *flags,
            ],
            log_path=self.logs / f"{name}-{uuid.uuid4().hex[:4]}.log",
            metrics=True,
            env=TEST_ENV,
            timeout_s=480,
        )
        self.servers[name] = server
        return server

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    def computations(self) -> dict[str, float]:
        return {
            n: metric(s, "circuit_attribution_computations_total")
            for n, s in self.servers.items()
            if s.process.poll() is None
        }

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop(grace_s=10)


@pytest.fixture(scope="session")
def fleet_redis():
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def random_model(tmp_path_factory):
    """The random-weight demo model with random transcoders: slow graphs on purpose."""
    from circuit_serve.demo import build_demo_model
    from circuit_serve.demo.random_transcoders import write_random_transcoders

    model = build_demo_model(tmp_path_factory.mktemp("fleet-random") / "llama", random_weights=True, seed=0)
    tc = write_random_transcoders(model, tmp_path_factory.mktemp("fleet-tc"), d_transcoder=256, seed=0)
    return model, tc
