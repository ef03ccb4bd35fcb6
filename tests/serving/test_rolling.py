"""A rolling replacement: two servers behind one multi-address target, a steady load of streams,
one server sent SIGTERM in the middle: no request fails (the client balances round robin over the
addresses and retries UNAVAILABLE; the draining server finishes what it has)."""

from __future__ import annotations

import signal
import threading
import time

from conftest import wait_for

from circuit_client import CircuitClient, CircuitRpcError, Sampling

WORKERS = 3
AFTER = 10  # streams the survivor finishes after the SIGTERM
DRAIN_S = 3.0  # and the load goes on at least this long after it (the drain window and the stop)
MAX_STREAMS = 400  # a bound on the load, whatever the machine's speed


def count_streams(server) -> float:
    return server.metric("circuit_rpc_requests_total", method="circuit.v1.Generation/GenerateStream", code="OK")


def test_sigterm_under_load_fails_no_request(launch_server):
    first, second = launch_server(), launch_server()
    target = f"ipv4:127.0.0.1:{first.port},127.0.0.1:{second.port}"
    done: list[int] = []
    failures: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def load() -> None:
        with CircuitClient(target, timeout=30) as client:
            while not stop.is_set():
                with lock:
                    if len(done) + len(failures) >= MAX_STREAMS:
                        return
                try:
                    chunks = list(client.stream("the old river", Sampling(max_new_tokens=16, ignore_eos=True)))
                    with lock:
                        done.append(sum(len(c.token_ids) for c in chunks))
                except CircuitRpcError as err:
                    with lock:
                        failures.append(f"{err.code.name}: {err}")

    workers = [threading.Thread(target=load) for _ in range(WORKERS)]
    for w in workers:
        w.start()
    assert wait_for(lambda: count_streams(first) > 0 and count_streams(second) > 0, 120.0, 0.1)  # both take traffic
    before = count_streams(second)
    first.process.send_signal(signal.SIGTERM)  # as the kubelet sends it
    sigterm = time.monotonic()
    assert wait_for(
        lambda: count_streams(second) >= before + AFTER and time.monotonic() - sigterm > DRAIN_S, 120.0, 0.1
    )
    stop.set()
    for w in workers:
        w.join(60)

    assert first.process.wait(30) == 0  # a clean drain
    assert not failures, failures[:5]
    assert len(done) >= AFTER and set(done) == {16}
