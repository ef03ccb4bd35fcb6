"""Start `circuit-serve serve` as a subprocess on free local ports and wait until it is SERVING.

    server = start_server(model_dir, ["--dtype", "float32"], log_path=Path("server.log"))
    ... CircuitClient(server.target) ...
    server.stop()

Used by `circuit-serve demo` and the benchmarks (bench/). Steps of `start_server`:

1. pick a free gRPC port (and a free metrics port when `metrics` is set; else metrics are off);
2. start `python -m circuit_serve.cli serve --model M --host 127.0.0.1 --port P ... FLAGS` in its
   own session (so a SIGKILL of the group also ends vLLM's engine-core child), output to `log_path`;
3. ask the health service every 0.5 s until it says SERVING; if the process exits first raise
   `ServerExited`, if `timeout_s` passes first raise `TimeoutError` (both with the log's tail); on
   any of these, or an interruption while waiting (SIGTERM under `stop_on_sigterm`, Ctrl-C), the
   process group is killed first.

`stop` sends SIGTERM, waits `grace_s`, then SIGKILLs the process group.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from circuit_client import CircuitClient, CircuitRpcError, Credentials

HOST = "127.0.0.1"
LOG_TAIL_CHARS = 3000


def stop_on_sigterm() -> None:
    """Make SIGTERM raise SystemExit here (in the main thread), so the `finally` blocks that stop the
    servers this process launched run. Each server runs in its own session: a `timeout` or a job
    runner's SIGTERM to this process alone would otherwise leave it, and its vLLM engine, running."""
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on at the moment of asking."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class ServerExited(RuntimeError):
    """The server process ended before its health service said SERVING."""


@dataclass
class LaunchedServer:
    """A running `circuit-serve serve` subprocess; `metrics_port` is 0 when metrics are off."""

    process: subprocess.Popen
    port: int
    metrics_port: int
    log_path: Path

    @property
    def target(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self, grace_s: float = 60.0) -> int | None:
        """SIGTERM, wait up to `grace_s`, then SIGKILL the process group; return the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        return self.process.returncode


def serve_command(model: str | Path, port: int, metrics_port: int, flags: Sequence[str] = ()) -> list[str]:
    """The `circuit-serve serve` command line on 127.0.0.1 (metrics on 127.0.0.1 too; port 0: off)."""
    return [
        sys.executable,
        "-m",
        "circuit_serve.cli",
        "serve",
        "--model",
        str(model),
        "--host",
        HOST,
        "--port",
        str(port),
        "--metrics-host",
        HOST,
        "--metrics-port",
        str(metrics_port),
        *flags,
    ]


def start_server(
    model: str | Path,
    flags: Sequence[str] = (),
    *,
    log_path: Path | None = None,
    log_prefix: str = "circuit-serve-",
    metrics: bool = False,
    env: dict[str, str] | None = None,
    credentials: Credentials | None = None,
    timeout_s: float | None = None,
    on_status: Callable[[CircuitClient, str | None], None] | None = None,
) -> LaunchedServer:
    """Serve `model` with `flags` (beyond the address and metrics flags); return once SERVING.

    `log_path`: where the server's output goes (default: a new temporary file named `log_prefix`...).
    `env`: variables added to this process's environment. `credentials`: for the health probe of a
    TLS or token server. `timeout_s`: None waits as long as the process lives. `on_status(client,
    status)` sees every health answer while waiting (None when the call failed).
    """
    port = free_port()  # 1.
    metrics_port = free_port() if metrics else 0
    if log_path is None:
        with tempfile.NamedTemporaryFile(prefix=log_prefix, suffix=".log", delete=False) as f:
            log_path = Path(f.name)
    with log_path.open("wb") as log:  # 2. (the child keeps its own copy of the descriptor)
        process = subprocess.Popen(
            serve_command(model, port, metrics_port, flags),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    server = LaunchedServer(process, port, metrics_port, log_path)
    try:
        _wait_until_serving(server, timeout_s, credentials, on_status)
    except BaseException:  # timed out, or interrupted (SIGTERM, Ctrl-C) while waiting: not left running
        server.stop(grace_s=0)
        raise
    return server


def _wait_until_serving(
    server: LaunchedServer,
    timeout_s: float | None,
    credentials: Credentials | None,
    on_status: Callable[[CircuitClient, str | None], None] | None,
) -> None:
    process, log_path = server.process, server.log_path
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with CircuitClient(server.target, timeout=2, retries=0, credentials=credentials) as probe:  # 3.
        while True:
            if process.poll() is not None:
                raise ServerExited(f"server exited with {process.returncode} (log {log_path}):\n{server.log_tail()}")
            try:
                status = probe.health()
            except CircuitRpcError:
                status = None
            if on_status is not None:
                on_status(probe, status)
            if status == "SERVING":
                return
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"server not SERVING after {timeout_s:.0f} s (log {log_path}):\n{server.log_tail()}")
            time.sleep(0.5)
