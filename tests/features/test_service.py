"""FeaturesService states (loading / no transcoders / no watchlist / --monitor-all) and admission."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from circuit_serve.config.features import FeaturesConfig
from circuit_serve.errors import BackendUnavailable, CapacityExceeded, NotConfigured
from circuit_serve.features.engine import SteerQuery, TokensInput
from circuit_serve.features.files import FeatureFileError
from circuit_serve.features.service import FeaturesService
from circuit_serve.features.steering import Intervention, Op, Sampling
from circuit_serve.features.types import FeatureRef
from circuit_serve.tracing import ReplacementModel


@pytest.fixture(scope="module")
def rm(llama, tokenizer):
    from tests.features.tiny import tiny_transcoders

    return ReplacementModel.from_hf(llama, tokenizer, tiny_transcoders("plt"))


@pytest.fixture
def watchlist(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text("- {name: a, layer: 1, index: 2, threshold: 0.5, action: flag}\n")
    return path


def test_states(rm, watchlist):
    service = FeaturesService(FeaturesConfig(), CollectorRegistry())
    with pytest.raises(BackendUnavailable):
        asyncio.run(service.feature_activations(TokensInput(prompt="x"), top_k=1))
    assert service.should_monitor(False) is False
    with pytest.raises(BackendUnavailable):
        service.should_monitor(True)
    service.load(None)
    with pytest.raises(NotConfigured, match="--transcoders"):
        service.should_monitor(True)
    service.load(rm)
    with pytest.raises(NotConfigured, match="--watchlist"):
        service.should_monitor(True)

    monitored = FeaturesService(FeaturesConfig(watchlist=watchlist), CollectorRegistry())
    monitored.load(rm)
    assert monitored.should_monitor(True) and not monitored.should_monitor(False)
    every = FeaturesService(FeaturesConfig(watchlist=watchlist, monitor_all=True), CollectorRegistry())
    every.load(rm)
    assert every.should_monitor(False)


def test_files_need_transcoders(watchlist):
    service = FeaturesService(FeaturesConfig(watchlist=watchlist), CollectorRegistry())
    with pytest.raises(FeatureFileError, match="needs --transcoders"):
        service.load(None)


def test_steering_goes_through_admission(rm):
    class FullPool:
        async def run(self, work, *, on_event, stop):
            raise CapacityExceeded("attribution queue is full")

    class Pool:
        calls = 0

        async def run(self, work, *, on_event, stop):
            Pool.calls += 1
            return await asyncio.to_thread(work, lambda *a: None, stop.is_set)

    query = SteerQuery(TokensInput(prompt="hey"), (Intervention(FeatureRef(0, 1), Op.SET, 0.0, (1,)),),
                       Sampling(max_new_tokens=2))
    service = FeaturesService(FeaturesConfig(), CollectorRegistry())
    service.load(rm, admission=FullPool())
    with pytest.raises(CapacityExceeded):
        asyncio.run(service.steer(query))
    service.load(rm, admission=Pool())
    assert len(asyncio.run(service.steer(query)).steered.token_ids) == 2 and Pool.calls == 1
