"""Fixtures for the attribution-service tests: a real Redis and fresh metrics."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # makes tests/support importable

from circuit_serve.metrics.attribution import AttributionMetrics  # noqa: E402
from circuit_serve.testing.redis_server import RedisServer, delete_prefix  # noqa: E402


@pytest.fixture(scope="session")
def redis_service():
    """URL of a Redis for the session: $REDIS_URL when given, else one started here."""
    given = os.environ.get("REDIS_URL")
    if given:
        yield given
        return
    with RedisServer() as server:
        yield server.url


@pytest.fixture
def redis_prefix(redis_service):
    """A key prefix no other test (or user of a shared Redis) writes; its keys are deleted after."""
    prefix = f"circuit-test-{uuid.uuid4().hex[:12]}:"
    yield prefix
    delete_prefix(redis_service, prefix)


@pytest.fixture
def private_redis():
    """A Redis this test owns outright, so it may stop and restart it."""
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture
def registry():
    return CollectorRegistry()


@pytest.fixture
def metrics(registry):
    return AttributionMetrics(registry)


@pytest.fixture(scope="session")
def random_model_dir(tmp_path_factory):
    """The demo model's random-weight variant (2 layers, d_model 128, BPE tokenizer). The attribution
    tests pair it with random transcoders whose graphs are large enough to be slow on purpose
    (queue, deadline and concurrency tests); the trained demo model's TopK transcoders give tiny graphs."""
    from circuit_serve.demo import build_demo_model

    return build_demo_model(tmp_path_factory.mktemp("random-demo-model") / "llama", random_weights=True, seed=0)
