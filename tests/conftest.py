"""Shared fixtures: free ports, the demo model (built once), and a real server process.

    def test_x(server):                 # one `circuit-serve serve` for the whole session
        with CircuitClient(server.target) as client: ...
        server.metrics()                # the /metrics text

    def test_y(launch_server, demo_model_dir):   # a server with other flags
        srv = launch_server("--max-new-tokens-limit", "8")

A server started by `launch_server` lives as long as what started it: one started by a test (or a
function fixture) stops when the test ends, by a module fixture when the module ends, by a
session fixture when the session ends, so that servers do not pile up in memory over the suite.

Servers run the real CLI (`python -m circuit_serve.cli serve`) with real vLLM on
127.0.0.1, float32, max_model_len 512, eager mode and a 1 GiB KV cache.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

MAX_MODEL_LEN = 512
MAX_NEW_TOKENS_LIMIT = 256
STARTUP_TIMEOUT_S = 480.0  # a loaded 2-core machine has taken over 240 s

# vLLM settings for these small CPU machines; a GPU run overrides nothing it needs.
TEST_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_LOGGING_LEVEL": "WARNING",
    "TOKENIZERS_PARALLELISM": "false",
}


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model (Llama variant), built once per session."""
    from circuit_serve.demo import build_demo_model

    return build_demo_model(tmp_path_factory.mktemp("demo-model") / "llama", arch="llama", seed=0)


@dataclass
class ServerProcess:
    process: subprocess.Popen
    port: int
    metrics_port: int
    log_path: Path
    # health statuses seen while starting, in order, and the status code of a Generate
    # call made while NOT_SERVING (None if the server was never seen NOT_SERVING)
    startup_statuses: list[str] = field(default_factory=list)
    generate_while_loading: str | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as resp:
            return resp.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample (`circuit_x_total`, `circuit_y_count`, ...); 0.0 when absent."""
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in self.metrics().splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            key, _, value = line.rpartition(" ")
            sample, _, label_text = key.partition("{")
            got = ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else ""
            if sample == name and got == want:
                return float(value)
        return 0.0

    def vllm(self, name: str, **labels: str) -> float:
        """A vLLM metric (`vllm:x`, labelled `model_name` and `engine`) summed over the samples whose
        labels include `labels`; 0.0 when absent."""
        from prometheus_client.parser import text_string_to_metric_families

        return sum(
            sample.value
            for family in text_string_to_metric_families(self.metrics())
            for sample in family.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, then wait; SIGKILL if it does not exit. Returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        return self.process.returncode


def wait_for(predicate: Callable[[], bool], timeout_s: float = 15.0, every_s: float = 0.2) -> bool:
    """Whether `predicate` held within `timeout_s` (polled every `every_s`)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every_s)
    return predicate()


def cancelled_stream_tokens(server: ServerProcess, hang_up: Callable[[], None], max_new_tokens: int) -> list[float]:
    """vLLM's tokens for each call of `hang_up` (open a stream asking `max_new_tokens`, read its first
    message, close it) until one stops short of `max_new_tokens`, three tries at most. After every try
    nothing runs or waits, and no token is generated in the following second.

    A try that ran out proves nothing: the demo model generates 256 tokens in about half a second, and
    with the cores taken by other work the first message reached the client only when the last token was
    generated (13 of 15 tries with two busy loops on a 2-core machine), leaving nothing to abort. A server
    that never aborts fails every try."""

    counts: list[float] = []
    while len(counts) < 3 and (not counts or counts[-1] >= max_new_tokens):
        before = server.vllm("vllm:generation_tokens_total")
        hang_up()
        assert wait_for(lambda: server.vllm("vllm:num_requests_running") == 0), "still running after the close"
        assert server.vllm("vllm:num_requests_waiting") == 0
        generated = server.vllm("vllm:generation_tokens_total")
        time.sleep(1.0)
        assert server.vllm("vllm:generation_tokens_total") == generated  # nothing generates for nobody
        counts.append(generated - before)
    return counts


def start_server(
    model_dir: Path, log_path: Path, *extra_args: str, env: dict[str, str] | None = None, credentials=None
) -> ServerProcess:
    """Start `circuit-serve serve` on free ports and wait until health says SERVING
    (`credentials`: a circuit_client.Credentials for a TLS server)."""
    from circuit_client import CircuitClient, CircuitRpcError, Sampling

    port, metrics_port = free_port(), free_port()
    cmd = [
        sys.executable,
        "-m",
        "circuit_serve.cli",
        "serve",
        "--model",
        str(model_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--metrics-host",
        "127.0.0.1",
        "--metrics-port",
        str(metrics_port),
        "--dtype",
        "float32",
        "--max-model-len",
        str(MAX_MODEL_LEN),
        "--enforce-eager",
        "--kv-cache-gib",
        "1",
        "--max-new-tokens-limit",
        str(MAX_NEW_TOKENS_LIMIT),
        "--grace-period",
        "5",
        *extra_args,
    ]
    log_file = log_path.open("wb")
    process = subprocess.Popen(
        cmd,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env={**os.environ, **TEST_ENV, **(env or {})},
        start_new_session=True,
    )
    server = ServerProcess(process, port, metrics_port, log_path)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    with CircuitClient(server.target, timeout=2, retries=0, credentials=credentials) as client:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()[-4000:]}")
            try:
                status = client.health()
            except CircuitRpcError:
                status = None
            if status and (not server.startup_statuses or server.startup_statuses[-1] != status):
                server.startup_statuses.append(status)
            if status == "SERVING":
                return server
            if status == "NOT_SERVING" and server.generate_while_loading is None:
                try:
                    client.generate("hi", Sampling(max_new_tokens=1))
                    server.generate_while_loading = "OK"
                except CircuitRpcError as err:
                    server.generate_while_loading = err.code.name
            if time.monotonic() > deadline:
                server.stop()
                raise TimeoutError(f"server not SERVING after {STARTUP_TIMEOUT_S}s:\n{server.log()[-4000:]}")
            time.sleep(0.5)


# The scope of each fixture being set up, innermost last (empty while a test itself runs): a server
# launched then belongs to that scope (see the module docstring).
_SETTING_UP: list[str] = []
_LAUNCHED: dict[str, list[ServerProcess]] = {"session": [], "module": [], "function": []}
_OWNER = {"session": "session", "package": "session", "module": "module", "class": "module", "function": "function"}


class _FixtureScopes:
    """Notes the scope of each fixture while it is set up. A plugin, not a conftest hook: pytest
    calls a conftest's hooks only for nodes under its directory, and session fixtures are set up
    on the session node, above tests/."""

    @pytest.hookimpl(hookwrapper=True)
    def pytest_fixture_setup(self, fixturedef, request):
        _SETTING_UP.append(fixturedef.scope)
        try:
            yield
        finally:
            _SETTING_UP.pop()


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(_FixtureScopes(), "circuit-fixture-scopes")


def _stop_all(servers: list[ServerProcess]) -> None:
    while servers:
        servers.pop().stop()


@pytest.fixture(autouse=True)
def _stop_this_tests_servers() -> Iterator[None]:
    yield
    _stop_all(_LAUNCHED["function"])


@pytest.fixture(scope="module", autouse=True)
def _stop_this_modules_servers() -> Iterator[None]:
    yield
    _stop_all(_LAUNCHED["module"])


@pytest.fixture(scope="session")
def launch_server(
    demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., ServerProcess]]:
    """Factory: `launch_server(*extra_cli_args, model_dir=None, env=None, credentials=None)`; the server
    stops when the test or fixture that launched it ends (its scope). `env` overrides TEST_ENV (e.g.
    {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}: vLLM's engine core in its own process, as in production)."""

    def launch(
        *extra_args: str, model_dir: Path | None = None, env: dict[str, str] | None = None, credentials=None
    ) -> ServerProcess:
        log_path = tmp_path_factory.mktemp("server") / "server.log"
        server = start_server(model_dir or demo_model_dir, log_path, *extra_args, env=env, credentials=credentials)
        _LAUNCHED[_OWNER[_SETTING_UP[-1]] if _SETTING_UP else "function"].append(server)
        return server

    yield launch
    for servers in _LAUNCHED.values():
        _stop_all(servers)


@pytest.fixture(scope="session")
def server(launch_server: Callable[..., ServerProcess]) -> ServerProcess:
    """One real server on the demo model for the whole session."""
    return launch_server()
