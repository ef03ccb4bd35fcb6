"""Graphs larger than gRPC's default 4 MiB receive limit, over a real server and a real Redis.

The server runs issue 10's random model (support/large_graphs.py: 6 layers, d_model 256,
2,048-feature transcoders firing about 5% of the time), whose two graphs come back as
results of 8-10 MB. The clients here open channels with gRPC's default options (4 MiB
receive limit) and use this project's generated stubs:

- `reassemble` below follows attribution.proto's "Large results" text and nothing else
  (no client library code): concatenate the chunks in index order, check the length and
  CRC-32 the header announces, parse as the header's message type;
- the client library (sync and asyncio) is then checked to give the same results.
"""

from __future__ import annotations

import asyncio
import uuid
import zlib

import grpc
import pytest

from circuit_client.attribution import AsyncAttributionClient, AttributionClient, AttributionSettings
from circuit_proto.v1 import attribution_pb2 as pb
from circuit_proto.v1 import attribution_pb2_grpc as pb_grpc
from circuit_proto.v1 import graph_pb2
from circuit_serve.demo.large_graph_model import D_TRANSCODER, GRAPHS, N_LAYERS, build_large_graph_model
from circuit_serve.testing.redis_server import delete_prefix

DEFAULT_LIMIT = 4 << 20  # gRPC's default max receive message length
PREFIX = f"t-large-{uuid.uuid4().hex[:8]}:"


@pytest.fixture(scope="module")
def large_server(launch_server, redis_service, tmp_path_factory):
    model_dir, tc_dir = build_large_graph_model(tmp_path_factory.mktemp("large-graphs"))
    srv = launch_server(
        "--transcoders",
        str(tc_dir),
        "--redis-url",
        redis_service,
        "--redis-prefix",
        PREFIX,
        "--attribution-max-prompt-tokens",
        "128",
        model_dir=model_dir,
    )
    yield srv
    srv.stop()
    delete_prefix(redis_service, PREFIX)


def request(prompt: str, max_feature_nodes: int | None) -> pb.AttributeRequest:
    req = pb.AttributeRequest(prompt=prompt)
    if max_feature_nodes is not None:
        req.settings.max_feature_nodes = max_feature_nodes
    return req


def reassemble(messages: list[pb.AttributeResponse]) -> tuple[pb.AttributionResult, int]:
    """The result of a stream, as attribution.proto's "Large results" says; and its byte size."""
    events = [m.WhichOneof("event") for m in messages]
    if "result" in events:
        return messages[events.index("result")].result, messages[events.index("result")].result.ByteSize()
    start = events.index("result_header")
    header = messages[start].result_header
    chunks = messages[start + 1 : start + 1 + header.chunk_count]
    assert [m.WhichOneof("event") for m in chunks] == ["result_chunk"] * header.chunk_count
    assert [m.result_chunk.index for m in chunks] == list(range(header.chunk_count))
    data = b"".join(m.result_chunk.data for m in chunks)
    assert len(data) == header.total_bytes
    assert zlib.crc32(data) == header.crc32
    assert header.message_type == "circuit.v1.AttributionResult"
    return pb.AttributionResult.FromString(data), len(data)


@pytest.fixture(scope="module")
def computed(large_server):
    """Each graph computed once through a default-limit channel: (key, messages, result, size)."""
    out = []
    with grpc.insecure_channel(large_server.target) as channel:  # default options: 4 MiB receive limit
        stub = pb_grpc.AttributionStub(channel)
        for prompt, mfn in GRAPHS:
            messages = list(stub.Attribute(request(prompt, mfn), timeout=900))
            result, size = reassemble(messages)
            out.append((messages[0].accepted.key, messages, result, size))
    return out


def test_every_graph_of_the_model_reaches_a_default_limit_client(computed):
    for (_prompt, mfn), (key, messages, result, size) in zip(GRAPHS, computed):
        assert messages[0].WhichOneof("event") == "accepted" and all(m.key == key for m in messages)
        assert size > DEFAULT_LIMIT, f"graph of {size} bytes does not test the limit"
        assert all(m.ByteSize() < DEFAULT_LIMIT for m in messages)
        assert messages[-1].WhichOneof("event") == "result_chunk"
        assert result.source == "computed"
        graph = result.graph
        n_pos = len(graph.input_tokens)
        assert n_pos == (7 if mfn is None else 71)
        # the model is the one the issue describes: about 5% of features fire (position 0 is zeroed)
        rate = graph.n_active_features / (N_LAYERS * (n_pos - 1) * D_TRANSCODER)
        assert 0.03 < rate < 0.07, rate
        feature_nodes = [n for n in graph.nodes if n.kind == graph_pb2.NODE_KIND_FEATURE]
        assert feature_nodes and len(graph.edges.weights) == len(graph.edges.sources) > 10_000
        assert len(result.frontend_json) > 1 << 20 and result.frontend_json.startswith(b"{")


def test_cache_hits_and_get_graph_stream_return_the_same_bytes(large_server, computed):
    with grpc.insecure_channel(large_server.target) as channel:
        stub = pb_grpc.AttributionStub(channel)
        for (prompt, mfn), (key, _, first, _) in zip(GRAPHS, computed):
            hit, _ = reassemble(list(stub.Attribute(request(prompt, mfn), timeout=120)))
            assert hit.source == "cache"
            assert hit.graph == first.graph and hit.frontend_json == first.frontend_json
            fetched, _ = reassemble(list(stub.GetGraphStream(pb.GetGraphRequest(key=key), timeout=120)))
            assert fetched.source == "cache" and fetched.graph == first.graph
            json_only, size = reassemble(
                list(stub.GetGraphStream(pb.GetGraphRequest(key=key, output=pb.GRAPH_OUTPUT_JSON), timeout=120))
            )
            assert not json_only.HasField("graph") and json_only.frontend_json == first.frontend_json
            # unary GetGraph sends one message: a default-limit client cannot take it
            with pytest.raises(grpc.RpcError) as err:
                stub.GetGraph(pb.GetGraphRequest(key=key), timeout=120)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_stored_entry_is_the_checked_v2_format_holding_the_sent_bytes(redis_service, computed):
    import redis

    from circuit_serve.cache import entry
    from circuit_serve.rpc.convert_attribution import GRAPH_FORMAT

    r = redis.Redis.from_url(redis_service)
    for key, _, result, _ in computed:
        blob = r.get(f"{PREFIX}graph:{key}")
        assert blob[:4] == b"CSGE" and int.from_bytes(blob[4:6], "big") == entry.ENTRY_VERSION == 2
        assert int.from_bytes(blob[6:8], "big") == GRAPH_FORMAT and blob[40] == entry.Codec.STORED
        sections = entry.decode(key, blob, graph_format=GRAPH_FORMAT)
        assert graph_pb2.Graph.FromString(bytes(sections["graph.pb"])) == result.graph
        assert sections["graph.json"] == result.frontend_json
    r.close()


def test_client_library_reassembles_with_the_default_limit(large_server, computed):
    with grpc.insecure_channel(large_server.target) as channel:
        client = AttributionClient(channel, retries=0)
        for (prompt, mfn), (key, _, first, _) in zip(GRAPHS, computed):
            got = client.attribute(prompt, AttributionSettings(max_feature_nodes=mfn))
            assert got.key == key and got.source == "cache"
            assert got.graph == first.graph and got.frontend_json == first.frontend_json
            fetched = client.get_graph(key)
            assert fetched.graph == first.graph and fetched.frontend_json == first.frontend_json

    async def go():
        async with grpc.aio.insecure_channel(large_server.target) as channel:
            client = AsyncAttributionClient(channel, retries=0)
            for (prompt, mfn), (key, _, first, _) in zip(GRAPHS, computed):
                got = await client.attribute(prompt, AttributionSettings(max_feature_nodes=mfn))
                assert got.source == "cache" and got.graph == first.graph and got.frontend_json == first.frontend_json
                fetched = await client.get_graph(key, output="proto")
                assert fetched.graph == first.graph and fetched.frontend_json == b""

    asyncio.run(go())
