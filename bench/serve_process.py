"""A `circuit-serve serve` subprocess for the benchmarks: started on a free local port,
waited on until health says SERVING, stopped with SIGTERM (SIGKILL after 60 s)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, flags: list[str], *, log_prefix: str, credentials=None) -> tuple[subprocess.Popen, str]:
    """Serve `model` with `flags` (beyond address, metrics and log level); return (process, target).
    `credentials` (circuit_client.Credentials) for the health probe of a TLS server."""
    from circuit_client import CircuitClient, CircuitRpcError

    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix=log_prefix, suffix=".log", delete=False)
    cmd = [sys.executable, "-m", "circuit_serve.cli", "serve", "--model", str(model), "--host", "127.0.0.1",
           "--port", str(port), "--metrics-port", "0", "--log-level", "WARNING", *flags]
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    target = f"127.0.0.1:{port}"
    with CircuitClient(target, timeout=2, retries=0, credentials=credentials) as probe:
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"server exited; see {log.name}")
            try:
                if probe.health() == "SERVING":
                    return server, target
            except CircuitRpcError:
                pass
            time.sleep(0.5)


def stop_server(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
