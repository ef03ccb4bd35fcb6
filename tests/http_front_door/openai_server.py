"""One real `circuit-serve serve` with `--http-port` for a test module: the demo model with a
chat template, random transcoders (watch rules, audits), a tokens file and `--max-concurrent-rpcs 4`.

While it loads, the fixture records what the HTTP front door answered (503 and its JSON) and lets the
official `openai` SDK's own retries wait for the model (the SDK honours `Retry-After`).
"""

from __future__ import annotations

import concurrent.futures
import json
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import openai
import pytest
from conftest import ServerProcess, free_port, start_server

from circuit_serve.auth import token_sha256
from circuit_serve.demo.random_transcoders import write_random_transcoders

TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
TOKENS = {"acme": "acme-secret", "bob": "bob-secret", "auditor": "audit-only-secret"}
MAX_IN_FLIGHT = 4


@dataclass
class HttpServer:
    process: ServerProcess
    http_port: int
    model: str
    loading_status: int | None = None  # a raw POST /v1/completions while loading
    loading_body: dict = field(default_factory=dict)
    loading_retry_after: str | None = None
    retried_text: str | None = None  # what the SDK got after retrying through the loading window

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/v1"

    def post(self, path: str, body: dict, token: str | None = TOKENS["acme"]) -> tuple[int, dict, dict]:
        """A raw POST: (status, JSON body, headers)."""
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}", json.dumps(body).encode(), headers, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read()), dict(resp.headers)
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read()), dict(err.headers)


def chat_model_dir(demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model with a chat template (the demo model's tokenizer has none)."""
    d = tmp_path_factory.mktemp("openai-model") / "demo"
    shutil.copytree(demo_model_dir, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["chat_template"] = TEMPLATE
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    return d


def _wait_http(port: int, timeout_s: float, starting: concurrent.futures.Future) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if starting.done():
            starting.result()  # raises when the server exited
            return
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
            return
        except urllib.error.HTTPError:
            return  # answering (503 while loading)
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"no HTTP answer on port {port} after {timeout_s}s")


def launch_http_server(chat_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> HttpServer:
    """Start the server; returns once it serves (the caller stops `.process`)."""
    tmp = tmp_path_factory.mktemp("openai-server")
    tcs = write_random_transcoders(chat_model_dir, tmp / "tcs", d_transcoder=128, seed=1)
    tokens = tmp / "tokens.json"
    scopes = {"acme": ["generate", "attribute"], "bob": ["generate", "attribute"], "auditor": ["attribute"]}
    tokens.write_text(
        json.dumps([{"name": n, "sha256": token_sha256(t), "scopes": scopes[n]} for n, t in TOKENS.items()])
    )
    http_port = free_port()
    args = (
        "--http-port",
        str(http_port),
        "--transcoders",
        str(tcs),
        "--auth-tokens",
        str(tokens),
        "--max-concurrent-rpcs",
        str(MAX_IN_FLIGHT),
        "--attribution-max-prompt-tokens",
        "128",
    )
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        starting = pool.submit(start_server, chat_model_dir, tmp / "server.log", *args)
        _wait_http(http_port, 480, starting)
        server = HttpServer(None, http_port, chat_model_dir.name)  # type: ignore[arg-type]
        body = {"model": server.model, "prompt": "the old river", "max_tokens": 3, "temperature": 0}
        server.loading_status, server.loading_body, headers = server.post("/v1/completions", body)
        server.loading_retry_after = headers.get("Retry-After")
        client = openai.OpenAI(base_url=server.base_url, api_key=TOKENS["acme"], max_retries=400, timeout=60)
        server.retried_text = client.completions.create(**body).choices[0].text
        server.process = starting.result()
    return server
