"""FeaturesEngine on a tiny ReplacementModel: values equal the graph's, listed/top-k, checks."""

from __future__ import annotations

import pytest
import torch

from circuit_serve.config.features import FeaturesConfig
from circuit_serve.domain.errors import InvalidRequest
from circuit_serve.domain.features import FeatureRef
from circuit_serve.features.engine import FeaturesEngine, SteerQuery, TokensInput
from circuit_serve.features.labels import Labels
from circuit_serve.features.steering import Intervention, Op, Sampling
from circuit_serve.tracing import ReplacementModel


@pytest.fixture(scope="module")
def engine(llama, transcoders, tokenizer):
    rm = ReplacementModel.from_hf(llama, tokenizer, transcoders)
    return FeaturesEngine(rm, labels=Labels({FeatureRef(1, 2): "two"}), config=FeaturesConfig(max_top_k=1000))


def test_values_equal_the_attribution_graph(engine):
    graph = engine.rm.attribute("hello world", max_n_logits=2, batch_size=64)
    rows = engine.feature_activations(TokensInput(prompt="hello world"), top_k=1000)
    assert [r.token_id for r in rows] == graph.input_tokens.tolist()
    got = {(v.feature.layer, r.position, v.feature.index): v.activation for r in rows for v in r.values}
    want = {tuple(k): v for k, v in zip(graph.active_features.tolist(), graph.activation_values.tolist())}
    assert got.keys() == want.keys() and all(got[k] == want[k] for k in want)

    listed = [FeatureRef(*k[::2]) for k in list(want)[:5]] + [FeatureRef(1, 2)]
    rows = engine.feature_activations(TokensInput(prompt="hello world"), features=listed)
    for r in rows:
        assert [v.feature for v in r.values] == listed
        for v in r.values:
            assert v.activation == want.get((v.feature.layer, r.position, v.feature.index), 0.0)
    assert rows[0].values[-1].label == "two"


def test_top_k_is_sorted_and_bounded(engine):
    rows = engine.feature_activations(TokensInput(token_ids=(0, 5, 9, 14)), top_k=3)
    assert rows[0].values == ()  # BOS: zeroed as in graphs
    for r in rows[1:]:
        acts = [v.activation for v in r.values]
        assert 0 < len(acts) <= 3 and acts == sorted(acts, reverse=True) and min(acts) > 0


def test_watched_activations_align_with_the_tokens(engine):
    ids = [0, 5, 9, 14, 3]
    features = [FeatureRef(0, 1), FeatureRef(2, 7)]
    rows = engine.feature_activations(TokensInput(token_ids=tuple(ids)), features=features)
    dense = torch.tensor([[v.activation for v in r.values] for r in rows])
    assert dense.shape == (5, 2)
    assert [(r.position, r.token_id) for r in rows] == list(enumerate(ids))
    # ids without BOS: the engine prepends it; positions after it still match the ids given
    short = engine.feature_activations(TokensInput(token_ids=tuple(ids[1:])), features=features)
    assert [r.token_id for r in short[1:]] == ids[1:] and len(short[1:]) == 4
    assert torch.equal(torch.tensor([[v.activation for v in r.values] for r in short]), dense)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"features": [FeatureRef(3, 0)]}, r"features\[0\]: layer 3 does not exist"),
        ({"features": [FeatureRef(0, 48)]}, r"features\[0\]: index 48 does not exist"),
        ({"top_k": 1001}, r"top_k: is 1001"),
        ({}, "exactly one of features"),
        ({"features": [FeatureRef(0, 1)], "top_k": 2}, "exactly one of features"),
    ],
)
def test_bad_queries(engine, kwargs, message):
    with pytest.raises(InvalidRequest, match=message):
        engine.feature_activations(TokensInput(prompt="hi"), **kwargs)


def test_steer_checks(engine):
    iv = (Intervention(FeatureRef(0, 1), Op.SET, 0.0, positions=(3,)),)
    with pytest.raises(InvalidRequest, match="position 3 is beyond the prompt"):
        engine.check_steer(SteerQuery(TokensInput(prompt="hi"), iv), max_tokens=64)
    with pytest.raises(InvalidRequest, match="above this server's limit of 8 tokens"):
        engine.check_steer(SteerQuery(TokensInput(prompt="hello"), iv, Sampling(max_new_tokens=4)), max_tokens=8)
    ids = engine.check_steer(SteerQuery(TokensInput(prompt="hey"), iv), max_tokens=64)
    result = engine.steer(SteerQuery(TokensInput(prompt="hey"), iv, Sampling(max_new_tokens=3), True), ids)
    assert result.prompt_token_ids == tuple(ids) and len(result.steered.token_ids) == 3 and result.default
