"""The real server process (`circuit-serve serve`, real vLLM, demo model, random transcoders, a
real Redis that needs a password) with mTLS and a tokens file: the CLI's health check over mTLS
(the Docker HEALTHCHECK), refusals of plaintext and certificate-less clients, every scope with
real answers, audits by their owner, token rotation on SIGHUP, and no credential in the log or
in /metrics (the server runs at DEBUG log level).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import grpc
import pytest

from circuit_client import CircuitClient, CircuitRpcError, Credentials, Sampling
from circuit_client.attribution import AttributionClient, AttributionSettings
from circuit_client.features import FeaturesClient, Intervention

from .conftest import TOKENS, token, write_tokens

SMALL = AttributionSettings(max_feature_nodes=48, batch_size=32)
PROMPT = "the capital of veigrouan is"
REDIS_PASSWORD = "hunter2-redis-pw-77c1e0"
NEWBIE = ("tok-newbie-0e1d2c3b4a5968778695", ["generate"])


@pytest.fixture(scope="module")
def redis_with_password():
    from circuit_serve.testing.redis_server import RedisServer

    server = RedisServer(extra_args=("--user", "circuit", "on", f">{REDIS_PASSWORD}", "~*", "&*", "+@all"))
    server.start()
    yield f"redis://circuit:{REDIS_PASSWORD}@127.0.0.1:{server.port}/0"
    server.close()


@pytest.fixture(scope="module")
def tokens_file(tmp_path_factory):
    return write_tokens(tmp_path_factory.mktemp("auth") / "tokens.yaml", list(TOKENS))


@pytest.fixture(scope="module")
def secure_server(launch_server, demo_model_dir, tmp_path_factory, pki, tokens_file, redis_with_password):
    from circuit_serve.demo.random_transcoders import write_random_transcoders

    tc = write_random_transcoders(demo_model_dir, tmp_path_factory.mktemp("tc"), d_transcoder=256, target_l0=16, seed=3)
    return launch_server(
        "--tls-cert",
        str(pki.server_cert),
        "--tls-key",
        str(pki.server_key),
        "--tls-client-ca",
        str(pki.ca),
        "--auth-tokens",
        str(tokens_file),
        "--transcoders",
        str(tc),
        "--redis-url",
        redis_with_password,
        "--redis-prefix",
        f"sec-{uuid.uuid4().hex[:8]}:",
        "--log-level",
        "DEBUG",
        credentials=Credentials(ca_cert=pki.ca, client_cert=pki.client_cert, client_key=pki.client_key),
    )


def creds(pki, name: str | None = None, secret: str | None = None) -> Credentials:
    return Credentials(
        ca_cert=pki.ca,
        client_cert=pki.client_cert,
        client_key=pki.client_key,
        token=secret or (token(name) if name else None),
    )


def code_of(call) -> grpc.StatusCode:
    try:
        call()
    except CircuitRpcError as err:
        return err.code
    return grpc.StatusCode.OK


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CIRCUIT_")}
    return subprocess.run(
        [sys.executable, "-m", "circuit_client.cli", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_health_check_over_mtls_as_the_docker_healthcheck_runs_it(secure_server, pki):
    tls_env = {
        "CIRCUIT_CA_CERT": str(pki.ca),
        "CIRCUIT_CLIENT_CERT": str(pki.client_cert),
        "CIRCUIT_CLIENT_KEY": str(pki.client_key),
    }
    ok = cli("health", "--target", secure_server.target, "--timeout", "5", env=tls_env)
    assert (ok.returncode, ok.stdout.strip()) == (0, "SERVING"), ok.stderr
    no_cert = cli("health", "--target", secure_server.target, "--timeout", "5", env={"CIRCUIT_CA_CERT": str(pki.ca)})
    assert no_cert.returncode == 1 and no_cert.stdout.startswith("UNREACHABLE")
    info = cli("info", "--target", secure_server.target, env={**tls_env, "CIRCUIT_TOKEN": token("acme")})
    assert info.returncode == 0 and '"model_name"' in info.stdout, info.stderr
    denied = cli("info", "--target", secure_server.target, env=tls_env)
    assert denied.returncode == 1 and "UNAUTHENTICATED" in denied.stderr


def test_plaintext_and_certificate_less_clients_are_refused(secure_server, pki):
    for credentials in (None, Credentials(ca_cert=pki.ca, token=token("ops"))):
        with CircuitClient(secure_server.target, timeout=5, retries=0, credentials=credentials) as client:
            assert code_of(client.health) == grpc.StatusCode.UNAVAILABLE
            assert code_of(lambda: client.generate("hi")) == grpc.StatusCode.UNAVAILABLE


def test_each_scope_gets_real_answers_for_its_rpcs_and_is_refused_the_others(secure_server, pki):
    iv = [Intervention(0, 0, "scale", 1.0, generated_tokens=True, all_prompt_positions=True)]

    def clients(name):
        gen = CircuitClient(secure_server.target, timeout=120, retries=0, credentials=creds(pki, name))
        return gen, AttributionClient(gen, timeout=300), FeaturesClient(gen, timeout=120)

    g, a, f = clients("ops")  # admin: everything
    assert g.generate(PROMPT, Sampling(max_new_tokens=2, temperature=0)).token_ids
    graph = a.attribute(PROMPT, SMALL)
    assert a.get_graph(graph.key).key == graph.key
    assert f.activations(PROMPT, top_k=2) and f.steer(PROMPT, iv, max_new_tokens=2).steered.token_ids
    g.close()

    expect = {
        "gen-only": {"generate": True, "attribute": False, "features": False, "steer": False},
        "auditor": {"generate": False, "attribute": True, "features": False, "steer": False},
        "feat": {"generate": False, "attribute": False, "features": True, "steer": False},
        "steerer": {"generate": False, "attribute": False, "features": False, "steer": True},
    }
    for name, allowed in expect.items():
        g, a, f = clients(name)
        calls = {
            "generate": [
                lambda: g.generate(PROMPT, Sampling(max_new_tokens=2, temperature=0)),
                lambda: list(g.stream(PROMPT, Sampling(max_new_tokens=2, temperature=0))),
            ],
            "attribute": [lambda: a.attribute(PROMPT, SMALL), lambda: a.get_graph(graph.key)],
            "features": [lambda: f.activations(PROMPT, top_k=2)],
            "steer": [lambda: f.steer(PROMPT, iv, max_new_tokens=2)],
        }
        for scope, fns in calls.items():
            for fn in fns:
                try:
                    fn()
                    code, details = grpc.StatusCode.OK, ""
                except CircuitRpcError as err:
                    code, details = err.code, err.details
                if allowed[scope]:
                    assert code == grpc.StatusCode.OK, (name, scope, code, details)
                else:
                    assert code == grpc.StatusCode.PERMISSION_DENIED, (name, scope, code)
                    assert f"needs the scope '{scope}'" in details
        assert g.model_info().model_name  # any valid token may ask what is served
        g.close()
    assert secure_server.metric("circuit_auth_failures_total", reason="missing_scope") >= 4 * 3


def test_a_tenant_cannot_audit_another_tenants_completion_and_admin_can(secure_server, pki):
    acme_c = creds(pki, "acme")
    with CircuitClient(secure_server.target, timeout=120, retries=0, credentials=acme_c) as acme:
        gen = acme.generate(PROMPT, Sampling(max_new_tokens=4, temperature=0))
    globex = AttributionClient(secure_server.target, timeout=300, credentials=creds(pki, "globex"))
    owner = AttributionClient(secure_server.target, timeout=300, credentials=acme_c)
    admin = AttributionClient(secure_server.target, timeout=300, credentials=creds(pki, "ops"))
    try:
        with pytest.raises(CircuitRpcError) as foreign:
            globex.attribute(None, SMALL, request_id=gen.request_id, token_index=1)
        with pytest.raises(CircuitRpcError) as unknown:
            globex.attribute(None, SMALL, request_id="gen-" + "0" * 32, token_index=1)
        assert foreign.value.code == unknown.value.code == grpc.StatusCode.NOT_FOUND
        assert foreign.value.details == unknown.value.details.replace("gen-" + "0" * 32, gen.request_id)

        own = owner.attribute(None, SMALL, request_id=gen.request_id, token_index=1)
        audited = admin.attribute(None, SMALL, request_id=gen.request_id, token_index=1)
        assert audited.key == own.key and audited.frontend_json == own.frontend_json

        assert owner.get_graph(own.key).frontend_json == own.frontend_json
        assert admin.get_graph(own.key).frontend_json == own.frontend_json
        with pytest.raises(CircuitRpcError) as hidden:
            globex.get_graph(own.key)
        assert hidden.value.code == grpc.StatusCode.NOT_FOUND
        log = secure_server.log()
        assert f"cross-tenant audit: admin 'ops' audits request {gen.request_id} of tenant 'acme'" in log
        assert f"cross-tenant audit: admin 'ops' fetches graph {own.key}" in log
    finally:
        for c in (globex, owner, admin):
            c.close()


def test_sighup_reloads_tokens_without_dropping_calls(secure_server, pki, tokens_file):
    reloads = secure_server.metric("circuit_auth_reloads_total", result="ok")
    revoked = CircuitClient(secure_server.target, timeout=120, retries=0, credentials=creds(pki, "revoked"))
    newbie = CircuitClient(secure_server.target, timeout=60, retries=0, credentials=creds(pki, secret=NEWBIE[0]))
    assert code_of(lambda: newbie.generate("hi", Sampling(max_new_tokens=1))) == grpc.StatusCode.UNAUTHENTICATED

    # a stream by the token about to be revoked is in flight while the file changes
    stream = revoked.stream(PROMPT, Sampling(max_new_tokens=200, temperature=0, ignore_eos=True))
    first = next(stream)
    chunks, done = [first], threading.Event()

    def drain():
        chunks.extend(stream)
        done.set()

    threading.Thread(target=drain, daemon=True).start()
    write_tokens(tokens_file, [n for n in TOKENS if n != "revoked"], extra={"newbie": NEWBIE})
    secure_server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while secure_server.metric("circuit_auth_reloads_total", result="ok") == reloads:
        assert time.monotonic() < deadline, "the server did not reload its tokens file after SIGHUP"
        time.sleep(0.1)

    assert newbie.generate("hi", Sampling(max_new_tokens=1)).request_id  # let in without a restart
    assert code_of(lambda: revoked.generate("hi", Sampling(max_new_tokens=1))) == grpc.StatusCode.UNAUTHENTICATED
    assert done.wait(120)
    assert chunks[-1].finished and chunks[-1].usage.completion_tokens == 200  # the call in flight finished
    assert secure_server.process.poll() is None
    revoked.close()
    newbie.close()


def test_no_credential_appears_in_the_log_or_in_metrics(secure_server, pki):
    # failures with a wrong token and a bad header first, so that both paths have run
    with CircuitClient(
        secure_server.target, timeout=10, retries=0, credentials=creds(pki, secret="tok-wrong-d41d8cd98f00b204e980")
    ) as client:
        assert code_of(client.model_info) == grpc.StatusCode.UNAUTHENTICATED
    text = secure_server.log() + "\n" + secure_server.metrics()
    secrets = [t for t, _ in TOKENS.values()] + [NEWBIE[0], "tok-wrong-d41d8cd98f00b204e980", REDIS_PASSWORD]
    assert [s for s in secrets if s in text] == []
    assert "DEBUG" in secure_server.log()  # the log was written at its most talkative level
    assert secure_server.metric("circuit_auth_failures_total", reason="unknown_token") >= 1


def test_the_dockerfile_runs_unprivileged_and_its_healthcheck_works_with_mtls(secure_server, pki):
    """No Docker engine here: read the Dockerfile, then run its HEALTHCHECK command (the same CLI,
    with the venv's `circuit` replaced by this interpreter) against the mTLS server with the
    environment the Dockerfile's header documents."""
    import json
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0") and text.index("USER") < text.index("ENTRYPOINT")
    command = json.loads(re.search(r"HEALTHCHECK[^\n]*\\\n\s*CMD (\[.*\])", text).group(1))
    assert command[:2] == ["/app/.venv/bin/circuit", "health"]
    args = [a.replace("127.0.0.1:50051", secure_server.target) for a in command[2:]]
    env = {
        "CIRCUIT_CA_CERT": str(pki.ca),
        "CIRCUIT_CLIENT_CERT": str(pki.client_cert),
        "CIRCUIT_CLIENT_KEY": str(pki.client_key),
        "CIRCUIT_SERVER_NAME": "localhost",
    }
    ok = cli("health", *args, env=env)
    assert (ok.returncode, ok.stdout.strip()) == (0, "SERVING"), ok.stderr
    without_cert = cli("health", *args, env={k: v for k, v in env.items() if "CLIENT" not in k})
    assert without_cert.returncode == 1


def test_demo_serves_and_connects_over_mtls_with_a_token(demo_model_dir, pki, tmp_path):
    """`circuit-serve demo` with the server's TLS flags and the client's CA, certificate and token."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(demo_model_dir, model)
    tokens = write_tokens(tmp_path / "tokens.json", ["acme"])
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CIRCUIT_")},
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "CIRCUIT_TOKEN": token("acme"),
    }
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "circuit_serve.cli",
            "demo",
            "--model",
            str(model),
            "--max-new-tokens",
            "4",
            "--tls-cert",
            str(pki.server_cert),
            "--tls-key",
            str(pki.server_key),
            "--tls-client-ca",
            str(pki.ca),
            "--auth-tokens",
            str(tokens),
            "--ca-cert",
            str(pki.ca),
            "--client-cert",
            str(pki.client_cert),
            "--client-key",
            str(pki.client_key),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "SERVING after" in run.stdout and "finish_reason=" in run.stdout
    log = (tmp_path / "server.log").read_text()
    assert "TLS with client certificates required (mTLS)" in log and token("acme") not in log
