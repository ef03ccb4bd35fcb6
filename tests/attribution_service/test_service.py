"""The attribution service with a stand-in engine: inputs, limits, keys, audit by request id."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import pytest

from circuit_serve.attribution import Accepted, AttributeRequest, AttributionInput, build_service
from circuit_serve.attribution.service import NO_TRANSCODERS
from circuit_serve.config.attribution import AttributionConfig
from circuit_serve.domain.errors import Cancelled, InvalidRequest, NotConfigured, NotFound
from circuit_serve.jobs import Computed
from circuit_serve.tracing.settings import AttributionSettings
from circuit_serve.tracing.targets import Contrast

BOS = 1


@dataclass
class StubEngine:
    model_id: str = "m" * 64
    transcoder_id: str = "t" * 64
    graph_format: int = 1
    vocab_size: int = 100
    max_positions: int = 64
    labels_id: str = ""
    batch_s: float = 0.0
    seen: list = field(default_factory=list)

    def tokenize(self, prompt):
        return [BOS] + [2 + (ord(c) % 90) for c in prompt]

    def prepare(self, ids):
        ids = list(ids)
        return ids if ids and ids[0] == BOS else [BOS, *ids]

    def compute(self, tokens, settings, targets, progress, should_stop, *, slug):
        self.seen.append((tuple(tokens), settings, targets))
        for i in range(3):
            if should_stop():
                raise Cancelled("stopped")
            time.sleep(self.batch_s)
            progress("attribution", (i + 1) / 3)
        return Computed({"graph.pb": repr((tokens, settings, targets)).encode(), "graph.json": b"{}"})


def config(**over):
    base = dict(
        max_prompt_tokens=16,
        max_feature_nodes_limit=500,
        max_batch_size=64,
        memory_budget_bytes=5 * 10**8,
        workers=1,
        max_queued=2,
    )
    base.update(over)
    return AttributionConfig(**base)


async def run(service, request, **kw):
    events = []
    async with contextlib.aclosing(service.attribute(request, **kw)) as stream:
        async for event in stream:
            events.append(event)
    return events


def req(settings=None, targets=None, **inp):
    return AttributeRequest(AttributionInput(**inp), settings or AttributionSettings(batch_size=16), targets)


def test_prompt_and_token_ids_give_the_same_graph(registry):
    engine = StubEngine()

    async def go():
        service = build_service(config(), registry, engine)
        a = await run(service, req(prompt="hi"))
        b = await run(service, req(token_ids=tuple(engine.tokenize("hi")[1:])))  # BOS prepended by prepare
        await service.close()
        return a, b

    a, b = asyncio.run(go())
    assert isinstance(a[0], Accepted) and a[0].key == b[0].key
    assert a[-1].source == "computed" and b[-1].source == "cache" and a[-1].sections == b[-1].sections
    # the unset max_feature_nodes became the server's limit, explicitly, before keying
    assert engine.seen[0][1].max_feature_nodes == 500
    assert registry.get_sample_value("circuit_attribution_requests_total", {"outcome": "cached"}) == 1


def test_key_depends_on_settings_and_targets(registry):
    engine = StubEngine()
    service = build_service(config(), registry, engine)
    tokens = [1, 2, 3]
    s = AttributionSettings(batch_size=16, max_feature_nodes=100)
    keys = {
        service.key_for(engine, tokens, s, None),
        service.key_for(engine, tokens, AttributionSettings(batch_size=16, max_feature_nodes=101), None),
        service.key_for(
            engine, tokens, AttributionSettings(batch_size=16, max_feature_nodes=100, node_threshold=0.5), None
        ),
        service.key_for(engine, tokens, s, (5,)),
        service.key_for(engine, tokens, s, (Contrast(5, 6),)),
        service.key_for(engine, [1, 2, 4], s, None),
        service.key_for(StubEngine(labels_id="l" * 64), tokens, s, None),
    }
    assert len(keys) == 7


def test_audit_a_served_completion_token(registry):
    engine = StubEngine()

    async def go():
        service = build_service(config(), registry, engine)
        service.on_completion("req-1", [BOS, 10, 11], [20, 21, 22])
        audited = await run(service, req(request_id="req-1", token_index=2))
        direct = await run(service, req(token_ids=(BOS, 10, 11, 20, 21)))
        errors = []
        for bad in (
            req(request_id="nope", token_index=0),
            req(request_id="req-1", token_index=3),
            req(request_id="req-1"),
            req(token_index=1, prompt="x"),
        ):
            with pytest.raises((NotFound, InvalidRequest)) as info:
                await run(service, bad)
            errors.append(info.value)
        await service.close()
        return audited, direct, errors

    audited, direct, errors = asyncio.run(go())
    assert audited[0].token_ids == (BOS, 10, 11, 20, 21) and audited[0].audited_token_id == 22
    assert audited[0].key == direct[0].key and direct[-1].source == "cache"
    assert isinstance(errors[0], NotFound) and "'nope'" in str(errors[0])
    assert isinstance(errors[1], InvalidRequest) and "token_index: must be in [0, 2]" in str(errors[1])
    assert "needs token_index" in str(errors[2]) and "needs request_id" in str(errors[3])


@pytest.mark.parametrize(
    "request_, message",
    [
        (req(), "give exactly one of prompt, prompt_token_ids, messages, or request_id with token_index (got none)"),
        (req(prompt="a", token_ids=(3,)), "(got prompt, prompt_token_ids)"),
        (req(token_ids=(3, 100)), "token ids [100] are outside the vocabulary [0, 100)"),
        (req(prompt="x" * 20), "the input has 21 tokens (BOS included); the attribution limit is 16"),
        (
            req(AttributionSettings(max_feature_nodes=501), prompt="hi"),
            "max_feature_nodes: 501 is above this server's limit of 500",
        ),
        (req(AttributionSettings(batch_size=65), prompt="hi"), "batch_size: 65 is above this server's limit of 64"),
        (req(AttributionSettings(node_threshold=0.0), prompt="hi"), "node_threshold: must be in (0, 1]"),
    ],
)
def test_bad_requests_name_the_limit(registry, request_, message):
    async def go():
        service = build_service(config(), registry, StubEngine())
        try:
            with pytest.raises(InvalidRequest) as info:
                await run(service, request_)
        finally:
            await service.close()
        return str(info.value)

    assert message in asyncio.run(go())


def test_without_transcoders_every_call_is_not_configured(registry):
    async def go():
        service = build_service(config(), registry, None)
        with pytest.raises(NotConfigured, match="--transcoders DIR"):
            await run(service, req(prompt="hi"))
        with pytest.raises(NotConfigured):
            await service.get_graph("0" * 64)
        await service.close()

    asyncio.run(go())
    assert "--transcoders" in NO_TRANSCODERS


def test_get_graph_and_background_jobs(registry):
    engine = StubEngine(batch_s=0.05)

    async def go():
        service = build_service(config(), registry, engine)
        with pytest.raises(InvalidRequest, match="not a graph key"):
            await service.get_graph("abc")
        # detach right after the key: the background waiter finishes the graph anyway
        async with contextlib.aclosing(
            service.attribute(
                AttributeRequest(AttributionInput(prompt="bg"), AttributionSettings(batch_size=16), background=True)
            )
        ) as s:
            first = await anext(s)
        await asyncio.sleep(0.02)
        with pytest.raises(NotFound, match="still being computed"):
            await service.get_graph(first.key)
        for _ in range(100):
            await asyncio.sleep(0.05)
            try:
                got = await service.get_graph(first.key)
                break
            except NotFound:
                pass
        with pytest.raises(NotFound, match="not in the cache"):
            await service.get_graph("f" * 64)
        await service.close()
        return got

    got = asyncio.run(go())
    assert got["graph.json"] == b"{}"


def test_detached_caller_without_background_stops_the_work(registry):
    engine = StubEngine(batch_s=0.1)

    async def go():
        service = build_service(config(), registry, engine)
        async with contextlib.aclosing(service.attribute(req(prompt="zz"))) as s:
            first = await anext(s)
            await anext(s)  # Running("starting")
        await asyncio.sleep(0.4)
        with pytest.raises(NotFound, match="not in the cache"):
            await service.get_graph(first.key)
        await service.close()

    asyncio.run(go())
    assert registry.get_sample_value("circuit_attribution_computations_total") == 0
