"""circuit.v1.Graph conversion: unpruned round trip, pruned subset, contrast targets."""

from __future__ import annotations

import pytest
import torch

from circuit_proto.v1 import graph_pb2 as pb
from circuit_serve.rpc.convert_graph import graph_from_proto, graph_to_proto, serialize_graph
from circuit_serve.tracing import Contrast
from tests.tracing.tracing_helpers import built_case


@pytest.fixture(scope="module")
def graph(case_dir):
    rm, _, tokens = built_case("gemma2-plt-jumprelu", case_dir)
    return rm.attribute(tokens, max_feature_nodes=50, targets=None)


def test_unpruned_round_trip(graph):
    msg = pb.Graph.FromString(serialize_graph(graph, None))
    assert not msg.pruned and len(msg.nodes) == graph.n_nodes == msg.n_nodes
    assert msg.n_active_features == graph.n_active
    back = graph_from_proto(msg)
    assert torch.equal(back.adjacency(), graph.adjacency())
    assert torch.equal(back.active_features, graph.active_features[graph.selected_features])
    assert back.settings == graph.settings
    assert back.logit_token_ids.tolist() == graph.logit_token_ids.tolist()
    assert back.scores() == pytest.approx(graph.scores(), abs=1e-6)
    assert (back.model_id, back.transcoder_id, back.timings) == (graph.model_id, graph.transcoder_id, graph.timings)
    assert len({n.node_id for n in msg.nodes}) == len(msg.nodes)


def test_pruned_message_holds_only_kept_nodes_and_edges(graph):
    pr = graph.prune()
    msg = graph_to_proto(graph, pr)
    assert msg.pruned
    assert [n.index for n in msg.nodes] == pr.node_mask.nonzero().flatten().tolist()
    kept = {n.index for n in msg.nodes}
    assert set(msg.edges.targets) <= kept and set(msg.edges.sources) <= kept
    js = graph.to_frontend_json()
    assert len(msg.edges.weights) == len(js["links"])
    assert msg.scores.replacement_score == pytest.approx(graph.scores()[0])
    with pytest.raises(ValueError):
        graph_from_proto(msg)


def test_contrast_target_in_message(case_dir):
    rm, _, tokens = built_case("gemma2-plt-jumprelu", case_dir)
    g = rm.attribute(tokens, targets=[Contrast(5, 6)])
    msg = graph_to_proto(g)
    logit = [n for n in msg.nodes if n.kind == pb.NODE_KIND_LOGIT]
    assert [(n.token_id, n.contrast_token_id) for n in logit] == [(5, 6)]
    assert graph_from_proto(msg).logit_contrast_ids == [6]
