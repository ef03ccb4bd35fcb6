"""FeaturesService states (loading / no transcoders / no watchlist / --monitor-all), request rules, admission."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from circuit_serve.attribution.loading import Replacement
from circuit_serve.config.features import FeaturesConfig
from circuit_serve.domain.errors import BackendUnavailable, CapacityExceeded, InvalidRequest, NotConfigured
from circuit_serve.domain.features import Action, FeatureRef, MonitorAsk, WatchedFeature, WatchRequest
from circuit_serve.features.engine import SteerQuery, TokensInput
from circuit_serve.features.files import FeatureFileError
from circuit_serve.features.service import FeaturesService
from circuit_serve.features.steering import Intervention, Op, Sampling
from circuit_serve.tracing import ReplacementModel


@pytest.fixture(scope="module")
def rm(llama, tokenizer):
    from tests.features.tiny import tiny_transcoders

    return ReplacementModel.from_hf(llama, tokenizer, tiny_transcoders("plt"))


def started(config, rm, **parts):
    service = FeaturesService(config, CollectorRegistry(), replacement=Replacement(model=rm), **parts)
    asyncio.run(service.start())
    return service


@pytest.fixture
def watchlist(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text("- {name: a, layer: 1, index: 2, threshold: 0.5, action: flag}\n")
    return path


def test_states(rm, watchlist):
    """Which generation requests are monitored, and the errors for what a server cannot do."""
    ask, no = MonitorAsk(monitor=True), MonitorAsk()
    service = FeaturesService(FeaturesConfig(), CollectorRegistry(), replacement=Replacement())
    with pytest.raises(BackendUnavailable):
        asyncio.run(service.feature_activations(TokensInput(prompt="x"), top_k=1))
    assert service.resolve(no) is None
    with pytest.raises(BackendUnavailable):
        service.resolve(ask)
    asyncio.run(service.start())
    with pytest.raises(NotConfigured, match="--transcoders"):
        service.resolve(ask)
    assert service.engine_monitor(Path("/nonexistent")) is None
    service = started(FeaturesConfig(), rm)
    with pytest.raises(NotConfigured, match="--watchlist"):
        service.resolve(ask)
    own = WatchedFeature("mine", FeatureRef(1, 3), 0.1, Action.STOP)
    watch = service.resolve(MonitorAsk(rules=(own,), values=True))  # rules alone need no watchlist
    assert watch == WatchRequest((dataclasses.replace(own, label=""),), n_server=0, values=True)

    monitored = started(FeaturesConfig(watchlist=watchlist), rm)
    assert monitored.resolve(no) is None
    watch = monitored.resolve(MonitorAsk(monitor=True, rules=(own,)))
    assert [w.name for w in watch.features] == ["a", "mine"] and watch.n_server == 1
    every = started(FeaturesConfig(watchlist=watchlist, monitor_all=True), rm)
    assert [w.name for w in every.resolve(no).features] == ["a"]


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ((WatchedFeature("x", FeatureRef(9, 0), 0.1, Action.STOP),), "layer 9 does not exist"),
        ((WatchedFeature("x", FeatureRef(0, 99999), 0.1, Action.STOP),), "index 99999 does not exist"),
        ((WatchedFeature("a", FeatureRef(0, 1), 0.1, Action.STOP),), "already used"),
        ((WatchedFeature("x", FeatureRef(0, 1), 0.1, Action.FLAG),) * 2, "already used"),
        (tuple(WatchedFeature(f"r{i}", FeatureRef(0, i), 0.1, Action.FLAG) for i in range(3)), "at most 2"),
    ],
)
def test_bad_rules_are_invalid_argument(rm, watchlist, rules, message):
    service = started(FeaturesConfig(watchlist=watchlist, max_request_watch=2), rm)
    with pytest.raises(InvalidRequest, match=message):
        service.resolve(MonitorAsk(rules=rules))


def test_files_need_transcoders(watchlist):
    service = FeaturesService(FeaturesConfig(watchlist=watchlist), CollectorRegistry(), replacement=Replacement())
    with pytest.raises(FeatureFileError, match="needs --transcoders"):
        asyncio.run(service.start())


def test_steering_goes_through_admission(rm):
    class FullPool:
        async def run(self, work, *, on_event, stop):
            raise CapacityExceeded("attribution queue is full")

    class Pool:
        calls = 0

        async def run(self, work, *, on_event, stop):
            Pool.calls += 1
            return await asyncio.to_thread(work, lambda *a: None, stop.is_set)

    query = SteerQuery(
        TokensInput(prompt="hey"), (Intervention(FeatureRef(0, 1), Op.SET, 0.0, (1,)),), Sampling(max_new_tokens=2)
    )
    service = started(FeaturesConfig(), rm, admission=FullPool())
    with pytest.raises(CapacityExceeded):
        asyncio.run(service.steer(query))
    service = started(FeaturesConfig(), rm, admission=Pool())
    assert len(asyncio.run(service.steer(query)).steered.token_ids) == 2 and Pool.calls == 1
