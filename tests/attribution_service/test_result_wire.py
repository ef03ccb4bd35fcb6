"""Results framed from stored bytes (rpc/result_wire.py) and their reassembly (client chunks.py).

The framing must be byte-for-byte what protobuf writes for the same messages, and a
chunked result must reassemble, as attribution.proto says, into exactly that result.
"""

from __future__ import annotations

import json
import zlib

import grpc
import pytest

from circuit_client.chunks import ResultAssembler
from circuit_client.errors import CircuitRpcError
from circuit_proto.v1 import attribution_pb2 as pb
from circuit_proto.v1 import graph_pb2
from circuit_serve.rpc import result_wire

KEY = "ab" * 32


def make_graph(n_nodes: int, n_edges: int) -> graph_pb2.Graph:
    g = graph_pb2.Graph(prompt="The capital of France is", input_tokens=[1, 7, 9], n_layers=6, pruned=True)
    g.nodes.extend(
        graph_pb2.Node(index=i, layer=i % 6, position=i % 3, feature=i, influence=i / 7, node_id=f"{i % 6}_{i}_{i % 3}")
        for i in range(n_nodes)
    )
    g.edges.targets.extend(range(n_edges))
    g.edges.sources.extend(reversed(range(n_edges)))
    g.edges.weights.extend(0.25 * i for i in range(n_edges))
    return g


GRAPH = make_graph(300, 5000)
JSON = json.dumps({"nodes": list(range(3000))}).encode()
SECTIONS = {"graph.pb": GRAPH.SerializeToString(), "graph.json": JSON}


def collect(key: str, result: bytes, chunk_bytes: int) -> list[bytes]:
    # split the result into uneven parts, as result_parts gives them (prefixes and sections)
    parts = [result[:3], memoryview(result)[3:5000], result[5000:5001], memoryview(result)[5001:]]
    return list(result_wire.result_messages(key, parts, chunk_bytes))


@pytest.mark.parametrize(
    "output", [pb.GRAPH_OUTPUT_UNSPECIFIED, pb.GRAPH_OUTPUT_BOTH, pb.GRAPH_OUTPUT_PROTO, pb.GRAPH_OUTPUT_JSON]
)
@pytest.mark.parametrize("source", ["cache", "computed"])
def test_framed_result_is_what_protobuf_writes(output, source):
    expected = pb.AttributionResult(source=source)
    if output != pb.GRAPH_OUTPUT_JSON:
        expected.graph.CopyFrom(GRAPH)
    if output != pb.GRAPH_OUTPUT_PROTO:
        expected.frontend_json = JSON
    views = {k: memoryview(v) for k, v in SECTIONS.items()}  # what a cache hit hands over
    framed = result_wire.result_bytes(views, source, output)
    assert framed == expected.SerializeToString()
    assert b"".join(result_wire.result_parts(views, source, output)) == framed
    assert result_wire.get_graph_response(framed) == pb.GetGraphResponse(result=expected).SerializeToString()
    [single] = collect(KEY, framed, chunk_bytes=len(framed))
    assert single == pb.AttributeResponse(key=KEY, result=expected).SerializeToString()


def test_large_result_is_chunked_and_reassembles_as_documented():
    result = result_wire.result_bytes(SECTIONS, "cache", pb.GRAPH_OUTPUT_BOTH)
    chunk = 10_000
    messages = [pb.AttributeResponse.FromString(m) for m in collect(KEY, result, chunk)]
    header = messages[0].result_header
    assert messages[0].WhichOneof("event") == "result_header" and all(m.key == KEY for m in messages)
    assert header.chunk_count == len(messages) - 1 == -(-len(result) // chunk) > 3
    assert header.total_bytes == len(result) and header.message_type == "circuit.v1.AttributionResult"
    assert [m.result_chunk.index for m in messages[1:]] == list(range(header.chunk_count))
    assert (
        all(len(m.result_chunk.data) == chunk for m in messages[1:-1]) and len(messages[-1].result_chunk.data) <= chunk
    )
    # the framed chunk messages are what protobuf writes too
    raw = collect(KEY, result, chunk)
    assert all(r == m.SerializeToString() for r, m in zip(raw, messages))
    # reassembly, as attribution.proto says: concatenate, check length and CRC-32, parse
    data = b"".join(m.result_chunk.data for m in messages[1:])
    assert len(data) == header.total_bytes and zlib.crc32(data) == header.crc32
    parsed = pb.AttributionResult.FromString(data)
    assert parsed.graph == GRAPH and parsed.frontend_json == JSON and parsed.source == "cache"
    # and the client library's assembler gives the same
    assembler = ResultAssembler()
    out = [assembler.feed(m) for m in messages]
    assert out[:-1] == [None] * (len(messages) - 1) and out[-1] == parsed
    assembler.check_done()


def chunked_messages(chunk: int = 10_000) -> list[pb.AttributeResponse]:
    result = result_wire.result_bytes(SECTIONS, "cache", pb.GRAPH_OUTPUT_BOTH)
    return [pb.AttributeResponse.FromString(m) for m in collect(KEY, result, chunk)]


def swap(ms, i, j):
    ms[i], ms[j] = ms[j], ms[i]
    return ms


def flip_byte(ms):
    data = bytearray(ms[2].result_chunk.data)
    data[5] ^= 1
    ms[2].result_chunk.data = bytes(data)
    return ms


def other_type(ms):
    ms[0].result_header.message_type = "circuit.v1.Graph"
    return ms


def progress_inside(ms):
    return ms[:2] + [pb.AttributeResponse(key=KEY, running=pb.AttributeRunning(phase="x"))] + ms[2:]


@pytest.mark.parametrize(
    "mangle",
    [
        lambda ms: swap(ms, 1, 2),  # out of order
        lambda ms: ms[:2] + ms[3:],  # a chunk missing
        lambda ms: ms[1:],  # no header
        flip_byte,  # corrupted data
        other_type,  # a message type this client does not read
        progress_inside,  # something else between the chunks
        lambda ms: ms + ms[:1],  # a second result announced but never sent
    ],
)
def test_assembler_refuses_what_the_protocol_forbids(mangle):
    assembler = ResultAssembler()
    with pytest.raises(CircuitRpcError) as err:
        for m in mangle(chunked_messages()):
            assembler.feed(m)
        assembler.check_done()
    assert err.value.code == grpc.StatusCode.DATA_LOSS and "chunked result" in err.value.details


def test_stream_ending_inside_a_chunked_result_is_data_loss():
    assembler = ResultAssembler()
    for m in chunked_messages()[:-1]:
        assert assembler.feed(m) is None
    with pytest.raises(CircuitRpcError, match="ended after"):
        assembler.check_done()


@pytest.mark.parametrize("kib", [0, 4081, 8192])
def test_chunk_size_must_fit_under_the_default_receive_limit(kib):
    from circuit_serve.config.attribution import AttributionConfig

    with pytest.raises(ValueError, match="--attribution-result-chunk-kib must be in"):
        AttributionConfig(result_chunk_bytes=kib << 10).validate()
    AttributionConfig(result_chunk_bytes=4080 << 10).validate()
