from __future__ import annotations

import pytest
import torch

from tests.features.tiny import ByteTokenizer, tiny_llama, tiny_transcoders


@pytest.fixture(scope="module")
def llama():
    torch.set_num_threads(1)
    return tiny_llama()


@pytest.fixture(scope="module", params=["plt", "clt"])
def transcoders(request):
    return tiny_transcoders(request.param)


@pytest.fixture(scope="module")
def tokenizer():
    return ByteTokenizer()
