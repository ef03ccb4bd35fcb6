"""Streamed rows (long prompts in bounded memory) against the dense path they replace.

Same inputs through `dense_rows=True` (every visited row held over all sources) and the
default streamed rows: the same selected features and pruning masks, adjacency within 1e-6 of
the largest edge; on the committed reference fixtures, on every tiny case, with rows spilled to
disk, with the attention pattern split into query blocks, and on a 512-token prompt.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from circuit_serve.domain.errors import InvalidRequest
from circuit_serve.tracing import ReplacementModel, load_transcoders
from circuit_serve.tracing import local_model as lm
from circuit_serve.tracing.prune import graph_scores
from circuit_serve.tracing.settings import AttributionSettings
from tests.tracing.tracing_helpers import CASES, FIXTURES, build_model, built_case, tiny_tokenizer, write_transcoders

PROMPT = "The capital of France is"


def assert_same_graph(a, b, rel: float = 1e-6) -> None:
    assert torch.equal(a.active_features, b.active_features)
    assert a.selected_features.tolist() == b.selected_features.tolist()
    A, B = a.compact_adjacency(), b.compact_adjacency()
    assert A.shape == B.shape
    assert (A - B).abs().max() <= rel * B.abs().max()
    pa, pb = a.prune(), b.prune()
    assert torch.equal(pa.node_mask, pb.node_mask) and torch.equal(pa.edge_mask, pb.edge_mask)
    assert np.allclose(a.scores(), b.scores(), atol=1e-6)


@pytest.mark.parametrize("arch,limit", [("llama", 120), ("gemma2", 100)])
def test_fixtures_streamed_equal_dense(arch, limit):
    rm = ReplacementModel.from_pretrained(FIXTURES / arch / "model", FIXTURES / arch / "transcoders")
    dense = rm.attribute(PROMPT, max_feature_nodes=limit, batch_size=16, dense_rows=True)
    streamed = rm.attribute(PROMPT, max_feature_nodes=limit, batch_size=16, dense_rows=False)
    assert streamed.edges.shape[1] == streamed.layout.n_cols  # compact: never rows x all active features
    assert_same_graph(streamed, dense)


@pytest.mark.parametrize("case", sorted(CASES))
def test_cases_streamed_equal_dense_with_spill_and_blocks(case, case_dir, monkeypatch):
    rm, _, tokens = built_case(case, case_dir)
    dense = rm.attribute(tokens, max_feature_nodes=12, batch_size=2, dense_rows=True)
    monkeypatch.setattr(rm, "row_memory_bytes", lambda *a: 0)  # every row block goes to disk
    monkeypatch.setattr(rm, "work_bytes", lambda *a: 1)  # one target per transposed pass
    monkeypatch.setattr(lm, "PATTERN_BLOCK", 3)  # 10 positions in 4 query blocks
    streamed = rm.attribute(tokens, max_feature_nodes=12, batch_size=2, dense_rows=False)
    assert len(streamed.selected_features) == 12
    assert_same_graph(streamed, dense)


def test_512_tokens_streamed_equal_dense(tmp_path):
    model = build_model("llama", seed=3, vocab=96, d=32, layers=2)
    model.config.max_position_embeddings = 512
    g = torch.Generator().manual_seed(0)
    tokens = torch.cat([torch.tensor([2]), torch.randint(3, 96, (511,), generator=g)])
    tdir = write_transcoders(tmp_path / "tc", model, "llama-plt-relu-skip", tokens, d_tc=32, density=0.05)
    tcs = load_transcoders(tdir, dtype=torch.float32, device="cpu")
    rm = ReplacementModel.from_hf(model, tiny_tokenizer(96), tcs, model_id="long-512")
    dense = rm.attribute(tokens, max_feature_nodes=300, batch_size=32, dense_rows=True)
    rm.row_memory_bytes = lambda *a: 100 * (dense.n_active + 3 * 512) * 4  # about 100 rows in memory, the rest on disk
    streamed = rm.attribute(tokens, max_feature_nodes=300, batch_size=32, dense_rows=False)
    assert dense.n_pos == 512 and dense.n_active > 1000
    assert_same_graph(streamed, dense)
    # the completeness identity's bookkeeping holds on the streamed graph too
    rep, comp = graph_scores(streamed.compact_adjacency(), streamed.layout, streamed.logit_probabilities)
    assert 0 < rep <= 1 and 0 < comp <= 1


def test_budget_refused_before_the_forward_pass_with_the_largest_prompt(case_dir, monkeypatch):
    rm, _, tokens = built_case("llama-plt-relu-skip", case_dir)
    calls = []
    real = rm.record
    monkeypatch.setattr(rm, "record", lambda *a, **k: calls.append(1) or real(*a, **k))
    s = AttributionSettings(max_feature_nodes=12)
    need = rm.estimate_memory(len(tokens), s, n_active=0)  # before the forward pass: what needs no features
    small = rm.estimate_memory(6, s, n_active=0)
    monkeypatch.setattr(rm, "memory_budget_bytes", (need + small) // 2)
    with pytest.raises(InvalidRequest, match=r"largest prompt that fits these settings is about \d+ tokens") as e:
        rm.attribute(tokens, max_feature_nodes=12)
    assert calls == []  # refused before anything ran
    fits = int(str(e.value).split("about ")[-1].split(" tokens")[0])
    assert 6 <= fits < len(tokens)
    assert rm.estimate_memory(fits, s, n_active=0) <= rm.memory_budget_bytes
    assert rm.estimate_memory(fits + 1, s, n_active=0) > rm.memory_budget_bytes
