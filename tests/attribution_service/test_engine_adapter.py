"""The service's engine adapter over the real ReplacementModel (demo model, random transcoders)."""

from __future__ import annotations

import json

import pytest

from circuit_serve.attribution.engine import TracingEngine
from circuit_serve.attribution.types import GRAPH_JSON, GRAPH_PROTO
from circuit_serve.domain.errors import Cancelled, InvalidRequest
from circuit_serve.tracing import AttributionSettings, ReplacementModel

SETTINGS = AttributionSettings(max_feature_nodes=64, batch_size=32)


@pytest.fixture(scope="module")
def replacement(random_model_dir, tmp_path_factory):
    from circuit_serve.demo.random_transcoders import write_random_transcoders

    tc = write_random_transcoders(random_model_dir, tmp_path_factory.mktemp("tc"), d_transcoder=256, seed=0)
    return ReplacementModel.from_pretrained(random_model_dir, tc, dtype="float32", device="cpu")


def fake_proto(graph, pruned) -> bytes:
    return json.dumps({"nodes": int(pruned.node_mask.sum()), "tokens": graph.input_tokens.tolist()}).encode()


def test_compute_matches_the_engine(replacement):
    engine = TracingEngine(replacement, serialize=fake_proto, graph_format=1)
    tokens = engine.prepare(engine.tokenize("Paris is the capital of"))
    assert tokens[0] == replacement.bos_id() and engine.prepare(tokens[1:]) == tokens
    seen = []
    computed = engine.compute(tokens, SETTINGS, None, lambda p, f: seen.append((p, f)), lambda: False, slug="k")
    direct = replacement.attribute(tokens, max_feature_nodes=64, batch_size=32)
    assert json.loads(computed.sections[GRAPH_JSON]) == json.loads(json.dumps(direct.to_frontend_json(slug="k")))
    assert json.loads(computed.sections[GRAPH_PROTO])["tokens"] == tokens
    stats = computed.stats
    assert stats.nodes_unpruned == direct.n_nodes and 0 < stats.nodes_pruned <= stats.nodes_unpruned
    assert 0 < stats.edges_pruned <= stats.edges_unpruned
    assert 0 <= stats.completeness_score <= 1 and 0 <= stats.replacement_score <= 1
    assert "5_feature_rows" in stats.phase_seconds and "serialize" in stats.phase_seconds
    assert seen[-1] == ("serialize", 1.0) and any(p.startswith("5") for p, _ in seen)


def test_stop_flag_and_bad_input(replacement):
    engine = TracingEngine(replacement, serialize=fake_proto, graph_format=1)
    tokens = engine.prepare(engine.tokenize("Paris is the capital of"))
    with pytest.raises(Cancelled):
        engine.compute(tokens, SETTINGS, None, lambda p, f: None, lambda: True, slug="k")
    with pytest.raises(InvalidRequest, match="empty"):
        engine.tokenize("  ")
    with pytest.raises(InvalidRequest, match="outside the vocabulary"):
        engine.prepare([1, engine.vocab_size])


def test_labels_reach_the_json_and_the_key(replacement):
    engine = TracingEngine(replacement, serialize=fake_proto, graph_format=1)
    assert engine.labels_id == ""
    tokens = engine.prepare(engine.tokenize("Paris is the capital of"))
    plain = json.loads(
        engine.compute(tokens, SETTINGS, None, lambda p, f: None, lambda: False, slug="k").sections[GRAPH_JSON]
    )
    feature = next(n for n in plain["nodes"] if n["feature_type"] == "cross layer transcoder")
    layer, index = int(feature["layer"]), int(feature["node_id"].split("_")[1])
    engine = TracingEngine(
        replacement, serialize=fake_proto, graph_format=1, labels={(layer, index): "a named feature"}
    )
    assert len(engine.labels_id) == 64
    labelled = json.loads(
        engine.compute(tokens, SETTINGS, None, lambda p, f: None, lambda: False, slug="k").sections[GRAPH_JSON]
    )
    assert any(n.get("clerp") == "a named feature" for n in labelled["nodes"])
