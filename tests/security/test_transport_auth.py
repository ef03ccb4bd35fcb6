"""TLS, mTLS, tokens and scopes against a real grpc.aio server built in-process by `build_server`
(every service registered, engines not loaded: a call that passes authentication reaches its
servicer and hears UNAVAILABLE or FAILED_PRECONDITION; one that does not hears the auth status).

The full server process (real vLLM, real model) is exercised in test_server_security.py.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from circuit_client import AsyncCircuitClient, CircuitClient, CircuitRpcError, Credentials
from circuit_client.attribution import AttributionClient
from circuit_client.features import FeaturesClient, Intervention
from circuit_proto.v1 import attribution_pb2, features_pb2, generation_pb2
from circuit_serve.app import Runtime, build_server, mark_serving
from circuit_serve.config.security import Reflection, SecurityConfig
from circuit_serve.config.serve import EngineConfig, ServeConfig
from circuit_serve.rpc.auth import AUTHENTICATED, METHOD_SCOPES

from .conftest import TOKENS, token, write_tokens

AUTH_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


@dataclass
class Running:
    target: str
    runtime: Runtime


@contextmanager
def in_process_server(security: SecurityConfig) -> Iterator[Running]:
    """A started server on 127.0.0.1:<free port>, health SERVING, on its own event loop thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start():
        runtime = Runtime.create(ServeConfig(engine=EngineConfig(model=Path("/nonexistent")), security=security))
        server, port, health = await build_server("127.0.0.1:0", runtime)
        await mark_serving(health, [])
        return server, port, runtime

    server, port, runtime = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    try:
        yield Running(f"127.0.0.1:{port}", runtime)
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def code_of(call) -> grpc.StatusCode:
    try:
        call()
    except CircuitRpcError as err:
        return err.code
    return grpc.StatusCode.OK


# ---------------------------------------------------------------------------- transport


def test_tls_client_succeeds_and_plaintext_client_fails(pki):
    security = SecurityConfig(tls_cert=pki.server_cert, tls_key=pki.server_key)
    with in_process_server(security) as srv:
        with CircuitClient(srv.target, timeout=5, retries=0, credentials=Credentials(ca_cert=pki.ca)) as client:
            assert client.health() == "SERVING"
        with CircuitClient(srv.target, timeout=5, retries=0) as plain:
            with pytest.raises(CircuitRpcError) as err:
                plain.health()
            assert err.value.code == grpc.StatusCode.UNAVAILABLE
        # TLS that does not trust the test CA (system roots) refuses the server
        with CircuitClient(srv.target, timeout=5, retries=0, credentials=Credentials(tls=True)) as untrusting:
            with pytest.raises(CircuitRpcError) as err:
                untrusting.health()
            assert err.value.code == grpc.StatusCode.UNAVAILABLE


def test_mtls_refuses_clients_without_a_trusted_certificate(pki):
    security = SecurityConfig(tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca)
    with in_process_server(security) as srv:
        good = Credentials(ca_cert=pki.ca, client_cert=pki.client_cert, client_key=pki.client_key)
        with CircuitClient(srv.target, timeout=5, retries=0, credentials=good) as client:
            assert client.health() == "SERVING"
        for creds in (
            Credentials(ca_cert=pki.ca),  # no certificate
            Credentials(ca_cert=pki.ca, client_cert=pki.rogue_cert, client_key=pki.rogue_key),
        ):  # untrusted CA
            with CircuitClient(srv.target, timeout=5, retries=0, credentials=creds) as client:
                with pytest.raises(CircuitRpcError) as err:
                    client.health()
                assert err.value.code == grpc.StatusCode.UNAVAILABLE


def test_asyncio_client_speaks_tls_and_sends_its_token(pki, tmp_path):
    security = SecurityConfig(
        tls_cert=pki.server_cert,
        tls_key=pki.server_key,
        tls_client_ca=pki.ca,
        auth_tokens=write_tokens(tmp_path / "tokens.json", ["acme"]),
    )
    base = dict(ca_cert=pki.ca, client_cert=pki.client_cert, client_key=pki.client_key)

    async def go():
        async with AsyncCircuitClient(
            srv.target, timeout=5, retries=0, credentials=Credentials(**base, token=token("acme"))
        ) as client:
            assert await client.health() == "SERVING"
            with pytest.raises(CircuitRpcError) as err:
                await client.model_info()  # authenticated; the engine is not loaded in this server
            assert err.value.code == grpc.StatusCode.UNAVAILABLE
        async with AsyncCircuitClient(srv.target, timeout=5, retries=0, credentials=Credentials(**base)) as client:
            with pytest.raises(CircuitRpcError) as err:
                await client.model_info()
            assert err.value.code == grpc.StatusCode.UNAUTHENTICATED

    with in_process_server(security) as srv:
        asyncio.run(go())


# ---------------------------------------------------------------------------- tokens and scopes


def calls(target: str, credentials: Credentials) -> dict[str, callable]:
    """One minimal call of every RPC, by full method name."""
    gen = CircuitClient(target, timeout=5, retries=0, credentials=credentials)
    att = AttributionClient(gen, timeout=5)
    fea = FeaturesClient(gen, timeout=5)
    return {
        "circuit.v1.Generation/Generate": lambda: gen.generate("hi"),
        "circuit.v1.Generation/GenerateStream": lambda: list(gen.stream("hi")),
        "circuit.v1.Generation/Tokenize": lambda: gen.tokenize("hi"),
        "circuit.v1.Generation/ModelInfo": lambda: gen.model_info(),
        "circuit.v1.Attribution/Attribute": lambda: att.attribute("hi"),
        "circuit.v1.Attribution/GetGraph": lambda: att.get_graph("0" * 64),
        "circuit.v1.Features/FeatureActivations": lambda: fea.activations("hi", top_k=1),
        "circuit.v1.Features/Steer": lambda: fea.steer("hi", [Intervention(0, 0, "set", 0.0)]),
    }


def test_method_table_names_every_rpc_of_every_service():
    served = {
        f"{s.full_name}/{m.name}"
        for mod in (generation_pb2, attribution_pb2, features_pb2)
        for s in mod.DESCRIPTOR.services_by_name.values()
        for m in s.methods
    }
    assert served == set(METHOD_SCOPES)


def test_each_scope_lets_its_rpcs_through_and_refuses_the_others(tmp_path):
    tokens_file = write_tokens(tmp_path / "tokens.json", list(TOKENS))
    with in_process_server(SecurityConfig(auth_tokens=tokens_file)) as srv:
        for name in ("acme", "gen-only", "auditor", "feat", "steerer", "ops"):
            scopes = set(TOKENS[name][1])
            for method, call in calls(srv.target, Credentials(token=token(name))).items():
                need = METHOD_SCOPES[method]
                allowed = need == AUTHENTICATED or need in scopes or "admin" in scopes
                try:
                    call()
                    code, details = grpc.StatusCode.OK, ""
                except CircuitRpcError as err:
                    code, details = err.code, err.details
                if allowed:
                    assert code not in AUTH_CODES, (name, method, code, details)
                else:
                    assert code == grpc.StatusCode.PERMISSION_DENIED, (name, method, code)
                    assert f"needs the scope '{need}'" in details, details
        for method, call in calls(srv.target, Credentials()).items():
            assert code_of(call) == grpc.StatusCode.UNAUTHENTICATED, method
        for method, call in calls(srv.target, Credentials(token="not-a-known-token")).items():
            assert code_of(call) == grpc.StatusCode.UNAUTHENTICATED, method
        with CircuitClient(srv.target, timeout=5, retries=0) as anonymous:
            assert anonymous.health() == "SERVING"  # health stays open
        reg = srv.runtime.registry
        by_reason = {
            r: reg.get_sample_value("circuit_auth_failures_total", {"reason": r})
            for r in ("missing_token", "unknown_token", "missing_scope")
        }
        assert by_reason == {"missing_token": 8, "unknown_token": 8, "missing_scope": by_reason["missing_scope"]}
        assert by_reason["missing_scope"] >= 6 * 3


def test_malformed_authorization_header_is_unauthenticated(tmp_path):
    with in_process_server(SecurityConfig(auth_tokens=write_tokens(tmp_path / "t.json", ["acme"]))) as srv:
        channel = grpc.insecure_channel(srv.target)
        stub = channel.unary_unary(
            "/circuit.v1.Generation/ModelInfo",
            request_serializer=generation_pb2.ModelInfoRequest.SerializeToString,
            response_deserializer=generation_pb2.ModelInfoResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as err:
            stub(generation_pb2.ModelInfoRequest(), metadata=[("authorization", f"Basic {token('acme')}")], timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and "Bearer" in err.value.details()
        channel.close()
        reg = srv.runtime.registry
        assert reg.get_sample_value("circuit_auth_failures_total", {"reason": "malformed_header"}) == 1


@pytest.mark.parametrize("mode", list(Reflection))
def test_reflection_follows_its_flag(tmp_path, mode):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    from circuit_client.credentials import open_channel

    security = SecurityConfig(auth_tokens=write_tokens(tmp_path / "t.json", ["feat"]), reflection=mode)
    with in_process_server(security) as srv:
        results = {}
        for who, creds in (("anonymous", None), ("token", Credentials(token=token("feat")))):
            channel = open_channel(srv.target, [], creds, aio=False)
            try:
                results[who] = sorted(ProtoReflectionDescriptorDatabase(channel).get_services())
            except grpc.RpcError as err:
                results[who] = err.code()
            channel.close()
    listed = results["token"]
    if mode == Reflection.OFF:
        assert results == {"anonymous": grpc.StatusCode.UNIMPLEMENTED, "token": grpc.StatusCode.UNIMPLEMENTED}
    elif mode == Reflection.OPEN:
        assert results["anonymous"] == listed and "circuit.v1.Generation" in listed
    else:
        assert results["anonymous"] == grpc.StatusCode.UNAUTHENTICATED and "circuit.v1.Generation" in listed


def test_metrics_endpoint_binds_only_where_the_operator_says():
    import socket
    import urllib.request

    from prometheus_client import CollectorRegistry

    from circuit_serve.metrics.exporter import start_metrics_server

    server = start_metrics_server(CollectorRegistry(), host="127.0.0.1", port=0)
    try:
        assert server.server.server_address[0] == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as resp:
            assert resp.status == 200
        # this machine's outward address (when it has one) does not reach it
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect(("192.0.2.123", 9))  # UDP: picks the outward interface, sends nothing
                address = probe.getsockname()[0]
            except OSError:
                address = "127.0.0.1"
        if not address.startswith("127."):
            with pytest.raises(OSError):
                socket.create_connection((address, server.port), timeout=2).close()
    finally:
        server.stop()
