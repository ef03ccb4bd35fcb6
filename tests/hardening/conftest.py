"""One real server with transcoders and deliberately small input limits, shared by the limits and
fuzz tests: the limits are small so that a test (or a fuzzer) reaches each of them cheaply."""

from __future__ import annotations

import pytest

from circuit_serve.demo.random_transcoders import write_random_transcoders
from circuit_serve.testing.fuzz_requests import LIMIT_FLAGS


@pytest.fixture(scope="session")
def limited_server(launch_server, demo_model_dir, tmp_path_factory):
    tc = write_random_transcoders(
        demo_model_dir, tmp_path_factory.mktemp("hardening-tc"), d_transcoder=128, target_l0=8, seed=5
    )
    flags = [str(x) for kv in LIMIT_FLAGS.items() for x in kv]
    return launch_server("--transcoders", str(tc), *flags)
