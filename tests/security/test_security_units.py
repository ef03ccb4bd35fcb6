"""Tokens file, owner checks of audits, the completions byte bound, the per-tenant queue limit,
redaction of credentials, and the client's credential plumbing (real Redis where Redis is used)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import pytest
from attribution_service.test_jobs import FakeEngine, collect, make_jobs
from attribution_service.test_service import StubEngine, config, req, run

from circuit_client import Credentials
from circuit_serve.attribution import AttributeRequest, AttributionInput, build_service
from circuit_serve.auth import ANONYMOUS, Principal, Scope, TokenFileError, TokenTable, parse_tokens, token_sha256
from circuit_serve.cache import RedisLink
from circuit_serve.cache.redis_link import redact_url
from circuit_serve.completions import CompletionStore
from circuit_serve.domain.errors import CapacityExceeded, NotFound
from circuit_serve.jobs import Queued
from circuit_serve.tracing.settings import AttributionSettings

from .conftest import token, write_tokens

ACME = Principal("acme", frozenset({Scope.GENERATE, Scope.ATTRIBUTE}))
GLOBEX = Principal("globex", frozenset({Scope.GENERATE, Scope.ATTRIBUTE}))
OPS = Principal("ops", frozenset({Scope.ADMIN}))


# ---------------------------------------------------------------------------- tokens file


def test_tokens_file_parses_yaml_and_json_and_admin_holds_every_scope(tmp_path):
    yaml_text = f"""
- name: acme
  sha256: {token_sha256("s3cret-acme")}
  scopes: [generate, attribute]
- name: ops
  sha256: {token_sha256("s3cret-ops").upper()}
  scopes: [admin]
"""
    table = parse_tokens(yaml_text)
    as_json = parse_tokens(
        json.dumps([{"name": p.name, "sha256": h, "scopes": sorted(p.scopes)} for h, p in table.items()])
    )
    assert table == as_json
    acme, ops = table[token_sha256("s3cret-acme")], table[token_sha256("s3cret-ops")]
    assert acme.allows(Scope.ATTRIBUTE) and not acme.allows(Scope.STEER) and not acme.is_admin
    assert all(ops.allows(s) for s in Scope) and ops.may_read("acme") and not acme.may_read("ops")
    assert ANONYMOUS.is_admin  # a server without tokens serves everyone as before


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "a", "sha256": "xyz", "scopes": ["generate"]}, "64 hex digits"),
        ({"name": "a", "sha256": "0" * 64, "scopes": ["generate", "root"]}, "unknown scopes ['root']"),
        ({"name": "a", "sha256": "0" * 64, "scopes": []}, "non-empty list"),
        ({"name": "", "sha256": "0" * 64, "scopes": ["generate"]}, "name must be"),
        ({"name": "a", "token": "plain", "sha256": "0" * 64, "scopes": ["generate"]}, "exactly the keys"),
    ],
)
def test_invalid_tokens_file_entries_are_refused_with_the_reason(entry, message):
    with pytest.raises(TokenFileError, match=message.replace("[", r"\[").replace("]", r"\]")) as err:
        parse_tokens(json.dumps([entry]))
    assert "plain" not in str(err.value)  # never echoes a value that could be a token


def test_reload_swaps_the_table_and_a_bad_file_keeps_the_old_one(tmp_path):
    path = write_tokens(tmp_path / "tokens.json", ["acme"])
    outcomes = []
    table = TokenTable(path, on_reload=lambda ok, n: outcomes.append((ok, n)))
    assert table.lookup(token("acme")).name == "acme" and table.lookup(token("ops")) is None
    write_tokens(path, ["ops"])
    assert table.reload()
    assert table.lookup(token("ops")).name == "ops" and table.lookup(token("acme")) is None
    path.write_text("- name: [unclosed")
    assert not table.reload()
    assert table.lookup(token("ops")).name == "ops"
    assert outcomes == [(True, 1), (True, 1), (False, 1)]
    with pytest.raises(TokenFileError, match="cannot read"):
        TokenTable(tmp_path / "missing.json")


# ---------------------------------------------------------------------------- completions store


def test_completions_carry_their_tenant_and_respect_a_byte_bound(metrics):
    async def go():
        # each record: 256 bytes overhead + 4 bytes a token + the tenant's name
        one = 256 + 4 * (10 + 40) + len("acme")
        store = CompletionStore(ttl_s=60, max_entries=1000, max_bytes=3 * one, metrics=metrics)
        for i in range(5):
            await store.record(f"r{i}", list(range(10)), list(range(40)), tenant="acme")
        assert len(store) == 3 and store.nbytes == 3 * one
        for gone in ("r0", "r1"):
            with pytest.raises(NotFound):
                await store.get(gone)
        item = await store.get("r4")
        assert item.tenant == "acme" and item.completion_token_ids == tuple(range(40))
        await store.record("huge", list(range(10_000)), [1], tenant="acme")  # larger than the whole budget
        with pytest.raises(NotFound):
            await store.get("huge")
        assert len(store) == 3 and store.nbytes <= store.max_bytes

    asyncio.run(go())


def test_redis_copy_keeps_the_tenant(redis_service, redis_prefix, metrics):
    async def go():
        a_link, b_link = RedisLink(redis_service, prefix=redis_prefix), RedisLink(redis_service, prefix=redis_prefix)
        a = CompletionStore(ttl_s=30, max_entries=10, metrics=metrics, link=a_link)
        b = CompletionStore(ttl_s=30, max_entries=10, metrics=metrics, link=b_link)
        await a.record("req-t", [1, 2], [3], tenant="globex")
        got = await b.get("req-t")  # another replica: from Redis
        assert got.tenant == "globex" and got.prompt_token_ids == (1, 2)
        # a record written before tenants existed has no owner: it is not served
        await a_link.call(
            "old", lambda r: r.set(a_link.key("completion", "old"), b'{"v":1,"prompt":[1],"completion":[2]}')
        )
        with pytest.raises(NotFound):
            await b.get("old")
        await a_link.close()
        await b_link.close()

    asyncio.run(go())


# ---------------------------------------------------------------------------- audits by their owner


def test_only_the_owner_or_an_admin_audits_a_completion_and_fetches_its_graph(registry, caplog):
    engine = StubEngine()

    async def go():
        service = build_service(config(), registry, engine)
        service.on_completion("gen-1", [1, 5, 6], [7, 8, 9], tenant="acme")
        audit = req(request_id="gen-1", token_index=1)

        with pytest.raises(NotFound) as unknown:
            await run(service, req(request_id="gen-nope", token_index=1), caller=GLOBEX)
        with pytest.raises(NotFound) as foreign:
            await run(service, audit, caller=GLOBEX)
        assert str(foreign.value) == str(unknown.value).replace("gen-nope", "gen-1")  # existence not revealed

        own = await run(service, audit, caller=ACME)
        key = own[0].key
        with caplog.at_level(logging.WARNING, logger="circuit_serve.attribution.service"):
            by_admin = await run(service, audit, caller=OPS)
        assert by_admin[0].key == key and by_admin[-1].source == "cache"
        assert "cross-tenant audit: admin 'ops' audits request gen-1 of tenant 'acme'" in caplog.text

        assert await service.get_graph(key, caller=ACME) == own[-1].sections
        assert await service.get_graph(key, caller=OPS) == own[-1].sections
        with pytest.raises(NotFound) as hidden:
            await service.get_graph(key, caller=GLOBEX)
        with pytest.raises(NotFound) as absent:
            await service.get_graph("e" * 64, caller=GLOBEX)
        assert str(hidden.value) == str(absent.value).replace("e" * 64, key)

        # a graph of a prompt the caller supplied has no owner: anyone with `attribute` reads it
        public = await run(service, req(prompt="open text"), caller=ACME)
        assert await service.get_graph(public[0].key, caller=GLOBEX) == public[-1].sections
        await service.close()

    asyncio.run(go())


def test_graph_ownership_is_shared_between_replicas(redis_service, redis_prefix, registry):
    from prometheus_client import CollectorRegistry

    from circuit_serve.config.attribution import AttributionConfig

    engine = StubEngine()
    cfg = AttributionConfig(**{**config().__dict__, "redis_url": redis_service, "redis_prefix": redis_prefix})

    async def go():
        a = build_service(cfg, registry, engine)
        b = build_service(cfg, CollectorRegistry(), engine)
        await a.start()  # with Redis, graphs are fleet jobs: computed by a started replica's workers
        await b.start()
        a.on_completion("gen-r", [1, 5], [7, 8], tenant="acme")
        await asyncio.sleep(0.05)  # the Redis copy is written in a task
        events = await run(b, req(request_id="gen-r", token_index=1), caller=ACME)  # audited on replica b
        key = events[0].key
        assert await a.get_graph(key, caller=ACME)
        with pytest.raises(NotFound):
            await a.get_graph(key, caller=GLOBEX)  # replica a knows the owner from Redis
        await a.close()
        await b.close()

    asyncio.run(go())


def test_completions_are_recorded_only_when_attribution_is_enabled(tmp_path):
    from circuit_serve.app import Runtime
    from circuit_serve.config.attribution import AttributionConfig
    from circuit_serve.config.serve import EngineConfig, ServeConfig

    (tmp_path / "tc").mkdir()
    without = Runtime.create(ServeConfig(engine=EngineConfig(model=tmp_path)))
    with_tc = Runtime.create(
        ServeConfig(engine=EngineConfig(model=tmp_path), attribution=AttributionConfig(transcoders=tmp_path / "tc"))
    )
    assert without.generation._listeners == []
    assert len(with_tc.generation._listeners) == 1


# ---------------------------------------------------------------------------- per-tenant queue limit


def test_one_tenant_cannot_fill_the_queue(metrics):
    engine = FakeEngine(batches=2, batch_s=0.01)
    engine.release.clear()

    async def go():
        jobs = make_jobs(metrics, workers=1, max_queued=4)
        jobs.pool.max_queued_per_tenant = 2
        running = asyncio.create_task(collect(jobs, "k0", engine.work("0"), tenant="acme"))
        await asyncio.sleep(0.05)
        queued = [asyncio.create_task(collect(jobs, f"k{i}", engine.work(f"{i}"), tenant="acme")) for i in (1, 2)]
        await asyncio.sleep(0.05)
        with pytest.raises(CapacityExceeded, match="limit 2 per tenant"):
            await collect(jobs, "k3", engine.work("3"), tenant="acme")
        other = asyncio.create_task(collect(jobs, "k4", engine.work("4"), tenant="globex"))
        anonymous = asyncio.create_task(collect(jobs, "k5", engine.work("5")))  # no tenant: global limit only
        await asyncio.sleep(0.05)
        assert jobs.pool.queued == 4 and jobs.pool.queued_for("acme") == 2
        with pytest.raises(CapacityExceeded, match="queue is full"):
            await collect(jobs, "k6", engine.work("6"), tenant="initech")
        engine.release.set()
        return await asyncio.gather(running, *queued, other, anonymous)

    results = asyncio.run(go())
    assert all(r[-1].sections for r in results)
    assert [e.position for e in results[3] if isinstance(e, Queued)] == [3, 2, 1]


# ---------------------------------------------------------------------------- credentials never shown


def test_redis_url_passwords_are_redacted():
    assert redact_url("redis://alice:hunter2@cache:6380/0") == "redis://alice:***@cache:6380/0"
    assert redact_url("rediss://:hunter2@cache/1") == "rediss://:***@cache/1"
    assert redact_url("redis://cache:6379/0") == "redis://cache:6379/0"


def test_client_credentials_hide_the_token_and_cli_reads_env_and_file(tmp_path, monkeypatch):
    import argparse

    from circuit_client import credentials_cli

    creds = Credentials(token="tok-very-secret", ca_cert="ca.pem")
    assert "tok-very-secret" not in repr(creds) and creds.use_tls
    assert creds.metadata() == (("authorization", "Bearer tok-very-secret"),)
    with pytest.raises(ValueError, match="together"):
        Credentials(client_cert="c.pem")

    parser = argparse.ArgumentParser()
    monkeypatch.setenv("CIRCUIT_TOKEN", "from-env")
    monkeypatch.setenv("CIRCUIT_CA_CERT", "/etc/ca.pem")
    credentials_cli.add_arguments(parser)
    from_env = credentials_cli.credentials_from_args(parser.parse_args([]))
    assert from_env.token == "from-env" and str(from_env.ca_cert) == "/etc/ca.pem" and from_env.use_tls
    (tmp_path / "tok").write_text("from-file\n")
    from_file = credentials_cli.credentials_from_args(parser.parse_args(["--token-file", str(tmp_path / "tok")]))
    assert from_file.token == "from-file"


def test_background_graphs_count_against_their_tenants_queue_limit(registry):
    engine = StubEngine(batch_s=0.3)  # three batches: about 1 s a graph

    async def go():
        service = build_service(config(workers=1, max_queued=4, max_queued_per_tenant=1), registry, engine)
        running = asyncio.create_task(run(service, req(prompt="first"), caller=ACME))
        await asyncio.sleep(0.1)
        # a background graph: the caller leaves after Accepted, the server keeps it queued for acme
        stream = service.attribute(
            AttributeRequest(
                AttributionInput(prompt="second"), AttributionSettings(batch_size=16), None, background=True
            ),
            caller=ACME,
        )
        async with contextlib.aclosing(stream) as events:
            await anext(events)
        await asyncio.sleep(0.1)
        assert service.jobs.pool.queued_for("acme") == 1
        with pytest.raises(CapacityExceeded, match="per tenant"):
            await run(service, req(prompt="third"), caller=ACME)
        other = await run(service, req(prompt="fourth"), caller=GLOBEX)  # another tenant still gets in
        await running
        await service.close()
        return other

    assert asyncio.run(go())[-1].sections
