"""Shutdown and the command-line tools, against real server processes."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from circuit_client import CircuitClient, CircuitRpcError, FinishReason, Sampling


def _circuit(*args: str) -> subprocess.CompletedProcess:
    code = "import sys; from circuit_client.cli import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


def test_cli_health_info_tokenize_generate(server):
    health = _circuit("health", "--target", server.target)
    assert health.returncode == 0 and health.stdout.strip() == "SERVING"

    info = _circuit("info", "--target", server.target)
    assert info.returncode == 0 and '"architecture": "LlamaForCausalLM"' in info.stdout

    tok = _circuit("tokenize", "The capital", "--target", server.target)
    assert tok.returncode == 0 and len(tok.stdout.splitlines()) >= 2

    gen = _circuit(
        "generate",
        "The capital of France is",
        "--max-new-tokens",
        "8",
        "--temperature",
        "0",
        "--usage",
        "--target",
        server.target,
    )
    assert gen.returncode == 0, gen.stderr
    with CircuitClient(server.target) as client:
        expected = client.generate("The capital of France is", Sampling(max_new_tokens=8, temperature=0))
    assert gen.stdout == expected.text + "\n"
    assert "completion_tokens=8" in gen.stderr or expected.finish_reason != FinishReason.LENGTH

    bad = _circuit("generate", "x", "--max-new-tokens", "0", "--target", server.target)
    assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr and "sampling.max_new_tokens" in bad.stderr


def test_cli_health_fails_without_server():
    from circuit_serve.launch import free_port

    result = _circuit("health", "--target", f"127.0.0.1:{free_port()}", "--timeout", "2")
    assert result.returncode == 1 and result.stdout.startswith("UNREACHABLE")


def test_sigterm_lets_in_flight_stream_finish_then_exits(launch_server):
    server = launch_server("--grace-period", "30")
    tokens = 96
    result: dict = {}
    first = threading.Event()

    def consume():
        with CircuitClient(server.target, timeout=120, retries=0) as client:
            n, finish = 0, None
            for chunk in client.stream(
                "The capital of France is", Sampling(max_new_tokens=tokens, ignore_eos=True, temperature=0.7, seed=3)
            ):
                n += len(chunk.token_ids)
                finish = chunk.finish_reason or finish
                first.set()
            result.update(n=n, finish=finish)

    worker = threading.Thread(target=consume)
    worker.start()
    assert first.wait(60)
    server.process.send_signal(__import__("signal").SIGTERM)

    # new calls are refused while the in-flight stream is allowed to finish
    refused = None
    with CircuitClient(server.target, timeout=5, retries=0) as client:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and refused is None:
            try:
                client.generate("hi", Sampling(max_new_tokens=1))
                time.sleep(0.05)
            except CircuitRpcError as err:
                refused = err.code
    worker.join(120)
    assert result == {"n": tokens, "finish": FinishReason.LENGTH}
    assert refused == grpc.StatusCode.UNAVAILABLE
    assert server.process.wait(60) == 0
    assert "stopped" in server.log()


def _digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def test_demo_model_is_deterministic(demo_model_dir, tmp_path):
    from circuit_serve.demo import build_demo_model

    again = build_demo_model(tmp_path / "again")
    assert _digests(again) == _digests(demo_model_dir)


@pytest.mark.slow
def test_gemma2_variant_fits_vllm_cpu_constraints(tmp_path):
    import json

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from circuit_serve.demo import build_demo_model

    path = build_demo_model(tmp_path / "gemma", arch="gemma2", seed=1)
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["Gemma2ForCausalLM"] and config["tie_word_embeddings"] is True
    assert config["head_dim"] in {32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ids = AutoTokenizer.from_pretrained(path)("The capital of France is", return_tensors="pt").input_ids
    assert model(ids).logits.shape == (1, ids.shape[1], config["vocab_size"])


def test_start_server_interrupted_while_waiting_leaves_nothing_running(demo_model_dir):
    # A benchmark killed (SIGTERM under stop_on_sigterm, Ctrl-C) while its server loads must not
    # leave the server and vLLM's engine behind: they run in their own session.
    import os
    import uuid

    from circuit_serve.launch import start_server

    mark = f"launch-test-{uuid.uuid4().hex}"

    class Interrupted(Exception):
        pass

    def marked() -> list[str]:
        pids = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and mark.encode() in (entry / "environ").read_bytes():
                    pids.append(entry.name)
            except OSError:
                continue
        return pids

    def interrupt_once_loading(probe, status):
        if marked():  # the server process is up (it answers or not): interrupt the wait now
            raise Interrupted

    with pytest.raises(Interrupted):
        start_server(
            demo_model_dir, ["--dtype", "float32"], env={"CIRCUIT_LAUNCH_MARK": mark}, on_status=interrupt_once_loading
        )
    deadline = time.monotonic() + 15
    while marked() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not marked(), f"processes of the interrupted server still run: {marked()} (this test's pid {os.getpid()})"
