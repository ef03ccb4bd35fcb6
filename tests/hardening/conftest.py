"""One real server with transcoders and deliberately small input limits, shared by the limits and
fuzz tests: the limits are small so that a test (or a fuzzer) reaches each of them cheaply."""

from __future__ import annotations

import pytest

from tests.support.transcoders import write_random_transcoders

# flag -> value; ModelInfo must report each under its Limits field name
LIMIT_FLAGS = {
    "--max-request-bytes": 65536,
    "--max-prompt-bytes": 2000,
    "--max-stop-strings": 3,
    "--max-stop-chars": 12,
    "--max-attribution-targets": 10,
    "--max-intervention-positions": 6,
    "--max-request-id-bytes": 64,
    "--max-concurrent-rpcs": 64,
    "--executor-threads": 4,
    "--max-executor-queue": 32,
    "--max-new-tokens-limit": 16,
    "--attribution-max-prompt-tokens": 24,
    "--attribution-max-feature-nodes": 64,
    "--attribution-max-batch-size": 64,
    "--attribution-max-queued": 4,
    "--features-max-prompt-tokens": 24,
    "--features-max-top-k": 8,
    "--features-max-listed": 10,
    "--max-steer-new-tokens": 8,
    "--max-interventions": 4,
}


@pytest.fixture(scope="session")
def limited_server(launch_server, demo_model_dir, tmp_path_factory):
    tc = write_random_transcoders(demo_model_dir, tmp_path_factory.mktemp("hardening-tc"), d_transcoder=128,
                                  target_l0=8, seed=5)
    flags = [str(x) for kv in LIMIT_FLAGS.items() for x in kv]
    return launch_server("--transcoders", str(tc), *flags)
