"""Fixtures: tiny random models with transcoders written in the on-disk format."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tracing_helpers import CASES, FrozenHF, build_model, tiny_tokenizer, write_transcoders  # noqa: E402

from circuit_serve.tracing import ReplacementModel, load_transcoders  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "reference"
PROMPT_IDS = [2, 17, 43, 8, 91, 23, 55, 4, 61, 30]  # BOS first; 10 positions (> Gemma's window of 4)


@pytest.fixture(scope="session", autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def case_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tracing")


_BUILT: dict[str, tuple] = {}


def built_case(case: str, root: Path):
    """(ReplacementModel, FrozenHF, tokens) for a CASES entry, built once per session."""
    if case not in _BUILT:
        arch = CASES[case][0]
        model = build_model(arch, seed=hash(case) % 1000)
        tokens = torch.tensor(PROMPT_IDS)
        tdir = write_transcoders(root / case, model, case, tokens)
        tcs = load_transcoders(tdir, dtype=torch.float32, device="cpu")
        rm = ReplacementModel.from_hf(model, tiny_tokenizer(model.config.vocab_size), tcs, model_id=f"test-{case}")
        _BUILT[case] = (rm, FrozenHF(model, tcs, tokens), tokens)
    return _BUILT[case]
