"""Fuzz: hypothesis-made requests of every RPC (every field of every request message, on the wire,
with values no generated stub would send, and random bytes) against a real server with transcoders.
Every one gets a status other than INTERNAL or UNKNOWN; the server stays up; a valid request
afterwards succeeds. bench/fuzz.py runs the same strategies for 1,000 requests."""

from __future__ import annotations

from collections import Counter

import grpc
import pytest
from hypothesis import HealthCheck, given, settings

from circuit_client import CircuitClient, Sampling
from circuit_serve.testing.fuzz_requests import FORBIDDEN, RPCS, fuzz_call, send

N_REQUESTS = 320


@pytest.fixture(scope="module")
def channel(limited_server):
    with grpc.insecure_channel(limited_server.target) as ch:
        yield ch


def test_fuzzed_requests_never_get_internal_or_unknown(limited_server, channel):
    seen: Counter = Counter()
    bad: list[tuple[str, str, str, bytes]] = []

    @settings(
        max_examples=N_REQUESTS, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    @given(fuzz_call())
    def one(call):
        code, details = send(channel, call)
        seen[(call.rpc.path.rsplit("/", 1)[1], code.name)] += 1
        if code in FORBIDDEN:
            bad.append((call.rpc.path, code.name, details, call.payload[:200]))
        assert limited_server.process.poll() is None, "the server died"

    one()
    assert not bad, f"{len(bad)} requests got INTERNAL/UNKNOWN, e.g. {bad[:3]}"
    assert sum(seen.values()) >= 300
    assert {path.rsplit("/", 1)[1] for path in (r.path for r in RPCS)} <= {m for m, _ in seen}, (
        "an RPC was never fuzzed"
    )
    assert seen.keys() - {(m, "OK") for m, _ in seen}, "nothing was refused: the fuzzer sent only valid requests"
    print("\n".join(f"{m} {c}: {n}" for (m, c), n in sorted(seen.items())))
    with CircuitClient(limited_server.target) as client:  # still serving, and correctly
        assert client.health() == "SERVING"
        assert client.generate("The capital of France is", Sampling(max_new_tokens=4, temperature=0)).token_ids


@pytest.mark.parametrize("rpc", RPCS, ids=[r.path.rsplit("/", 1)[1] for r in RPCS])
def test_the_fuzzers_valid_requests_are_valid(channel, rpc):
    """The bases the fuzzer mutates are answered (OK, or NOT_FOUND for the unknown graph key)."""
    from circuit_serve.testing.fuzz_requests import VALID, FuzzCall

    for payload in VALID[rpc.path.rsplit("/", 1)[1]]:
        code, details = send(channel, FuzzCall(rpc, payload, "valid"))
        assert code in (grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND), details
