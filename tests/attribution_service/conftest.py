"""Fixtures for the attribution-service tests: a real Redis and fresh metrics."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # makes tests/support importable

from support.redis_server import RedisServer, delete_prefix  # noqa: E402

from circuit_serve.metrics.attribution import AttributionMetrics  # noqa: E402


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
