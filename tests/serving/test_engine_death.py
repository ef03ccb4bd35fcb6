"""Health that tells the truth: a transcoder set that fails to load, and vLLM's engine-core process
killed under a running TLS server.

One server for the module, as in production: vLLM's engine core in its own process
(VLLM_ENABLE_V1_MULTIPROCESSING=1), TLS on the main port and `--health-port` serving grpc.health.v1
alone in plaintext (what the kubelet's probes use); its `--transcoders` has a corrupt layer file;
`--engine-core-cpus` places the engine core on one CPU.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from circuit_client import CircuitClient, CircuitRpcError, Credentials, Sampling
from circuit_client.attribution import AttributionClient
from circuit_serve.demo.random_transcoders import write_random_transcoders
from circuit_serve.generation.placement import place_engine_core
from circuit_serve.launch import free_port
from circuit_serve.testing.certs import make_pki

EXIT_S = 6.0  # --engine-dead-exit-s
ENGINE_CORE_CPU = max(os.sched_getaffinity(0))  # --engine-core-cpus
GENERATION = "circuit.v1.Generation"


@pytest.fixture(scope="module")
def tls_server(launch_server, demo_model_dir, tmp_path_factory):
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    broken = write_random_transcoders(demo_model_dir, tmp_path_factory.mktemp("broken-tc"), d_transcoder=64, seed=1)
    (broken / "layer_1.safetensors").write_bytes(b"not a safetensors file")
    health_port = free_port()
    creds = Credentials(ca_cert=pki.ca)
    server = launch_server(
        "--tls-cert",
        str(pki.server_cert),
        "--tls-key",
        str(pki.server_key),
        "--health-port",
        str(health_port),
        "--transcoders",
        str(broken),
        "--engine-dead-exit-s",
        str(EXIT_S),
        "--max-new-tokens-limit",
        "480",
        "--engine-core-cpus",
        str(ENGINE_CORE_CPU),
        env={"VLLM_ENABLE_V1_MULTIPROCESSING": "1"},
        credentials=creds,
    )
    return server, health_port, creds


def plain_health(port: int, service: str = "") -> str:
    """grpc.health.v1 Check over plaintext; the status name, or the gRPC code's name when the call fails."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
        except grpc.RpcError as err:
            return err.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def test_a_replacement_model_that_fails_to_load_turns_only_its_services_not_serving(tls_server):
    server, health_port, creds = tls_server
    for service in ("circuit.v1.Attribution", "circuit.v1.Features"):
        assert plain_health(health_port, service) == "NOT_SERVING", service
        assert server.metric("circuit_serving", grpc_service=service) == 0.0
    assert server.metric("circuit_serving", grpc_service=GENERATION) == 1.0
    with (
        AttributionClient(server.target, credentials=creds, retries=0) as graphs,
        pytest.raises(CircuitRpcError) as err,
    ):
        graphs.attribute("the old river")
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    with CircuitClient(server.target, credentials=creds) as client:  # generation serves, unmonitored
        assert len(client.generate("the old river", Sampling(max_new_tokens=3, ignore_eos=True)).token_ids) == 3
    assert "the replacement model failed to load" in server.log()


def engine_core(pid: int) -> psutil.Process:
    found = [p for p in psutil.Process(pid).children(recursive=True) if p.name().startswith("VLLM::EngineCor")]
    assert len(found) == 1, [p.name() for p in psutil.Process(pid).children(recursive=True)]
    return found[0]


def process_cpus(pid: int) -> set[int]:
    """The union of the CPUs the threads of process `pid` may run on."""
    out: set[int] = set()
    for thread in psutil.Process(pid).threads():
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            out |= os.sched_getaffinity(thread.id)
    return out


def test_the_engine_core_runs_on_the_cpus_given_and_its_worker_where_vllm_put_it(tls_server):
    server, _, _ = tls_server
    core = engine_core(server.process.pid)
    assert process_cpus(core.pid) == {ENGINE_CORE_CPU}  # every thread of it
    workers = [p for p in core.children() if p.name().startswith("VLLM::Worker")]
    # vLLM's own binding (auto: the worker's cores leave the last for the engine core) is not ours
    assert len(workers) == 1 and process_cpus(workers[0].pid) != {ENGINE_CORE_CPU}
    assert f"placed on CPUs [{ENGINE_CORE_CPU}]" in server.log()


def test_health_port_answers_in_plaintext_while_the_main_port_needs_tls(tls_server):
    server, health_port, creds = tls_server
    for service in ("", GENERATION):
        assert plain_health(health_port, service) == "SERVING", service
    assert plain_health(server.port) == "UNAVAILABLE"  # plaintext on the TLS port: no handshake
    with CircuitClient(server.target, credentials=creds) as client:
        assert client.health() == "SERVING"
    with grpc.insecure_channel(f"127.0.0.1:{health_port}") as channel:  # health alone on that port
        with pytest.raises(grpc.RpcError) as err:
            channel.unary_unary("/circuit.v1.Generation/ModelInfo")(b"", timeout=2)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_killed_engine_core_turns_health_not_serving_and_the_process_exits(tls_server):
    server, health_port, creds = tls_server
    core = engine_core(server.process.pid)
    ended: dict[str, object] = {}
    killed = 0.0

    def stream() -> None:
        # retries=0: the status the server gives, not the client's retry of it
        with CircuitClient(server.target, credentials=creds, timeout=30, retries=0) as client:
            try:
                for _ in client.stream("the old river", Sampling(max_new_tokens=480, ignore_eos=True)):
                    pass
                ended["result"] = "finished"
            except CircuitRpcError as err:
                ended["result"] = err.code.name
            ended["after"] = time.monotonic() - killed

    # The engine core is stopped before the stream starts, so the stream cannot finish before the kill
    # (killed on its first chunk, a placed engine core had sometimes finished all 480 tokens by then).
    core.send_signal(signal.SIGSTOP)
    reader = threading.Thread(target=stream)
    reader.start()
    deadline = time.monotonic() + 30
    while server.metric("circuit_rpc_in_flight", method="circuit.v1.Generation/GenerateStream") < 1:
        assert time.monotonic() < deadline, "the stream never reached the server"
        time.sleep(0.05)
    time.sleep(0.3)  # the request on its way into the (stopped) engine
    killed = time.monotonic()
    core.send_signal(signal.SIGKILL)

    reader.join(30)
    assert ended.get("result") == "UNAVAILABLE", ended  # the stream in flight ended, retryable
    assert ended["after"] < 2.0, ended  # at the engine's death, not when the server's shutdown ends it

    statuses = {}
    while time.monotonic() - killed < 5.0 and len(statuses) < 2:
        for service in ("", GENERATION):
            if plain_health(health_port, service) == "NOT_SERVING":
                statuses.setdefault(service, time.monotonic() - killed)
        time.sleep(0.1)
    assert set(statuses) == {"", GENERATION}, statuses  # within 5 s of the kill
    assert server.metric("circuit_serving", grpc_service="") == 0.0  # set with health (metrics still up)

    status = server.process.wait(EXIT_S + 10)
    exited_after = time.monotonic() - killed
    assert status != 0
    assert exited_after <= EXIT_S + 2.0, exited_after
    assert "vLLM's engine died" in server.log()


def test_engine_core_cpus_with_the_engine_core_in_this_process_is_refused():
    class InProcess:  # what AsyncLLM has with VLLM_ENABLE_V1_MULTIPROCESSING=0: no engine process
        engine_core = object()

    with pytest.raises(RuntimeError, match="engine core in this process: --engine-core-cpus has nothing to place"):
        place_engine_core(InProcess(), frozenset({0}))
