"""Attribution results framed as protobuf wire bytes around the stored sections, never parsed.

A finished graph is kept as sections that are already serialized (a circuit.v1.Graph and
the frontend JSON). Parsing the Graph into a message only to serialize it again costs far
more than moving its bytes, so the result messages are framed around the sections instead.
Protobuf encodes a message-typed or bytes field as its tag, a varint length and the bytes,
so (field numbers from attribution.proto):

    AttributionResult  = [1 graph: LEN] [2 frontend_json: LEN] [3 source: LEN]
    AttributeResponse  = 1 key: LEN, then one of 5 result: LEN | 20 result_header | 21 result_chunk: LEN
    ResultChunk        = [1 index: VARINT] 2 data: LEN
    GetGraphResponse   = 1 result: LEN

The bytes are exactly what SerializeToString writes for the same messages (fields in
number order, defaults left out; tests/attribution_service/test_result_wire.py checks it).

Results larger than `chunk_bytes` go out as a `result_header` and `result_chunk`s
(attribution.proto, "Large results"); the SHA-256 of the result is hashed off the event
loop (hashlib releases the GIL), the rest is slicing.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Mapping

from circuit_client._pb.circuit.v1 import attribution_pb2 as pb
from circuit_serve.attribution.types import GRAPH_JSON, GRAPH_PROTO

RESULT_MESSAGE_TYPE = pb.AttributionResult.DESCRIPTOR.full_name  # "circuit.v1.AttributionResult"
_VARINT, _LEN = 0, 2
_WITH_GRAPH = (pb.GRAPH_OUTPUT_UNSPECIFIED, pb.GRAPH_OUTPUT_BOTH, pb.GRAPH_OUTPUT_PROTO)
_WITH_JSON = (pb.GRAPH_OUTPUT_UNSPECIFIED, pb.GRAPH_OUTPUT_BOTH, pb.GRAPH_OUTPUT_JSON)
# AttributeResponse fields
_KEY, _RESULT, _HEADER, _CHUNK = 1, 5, 20, 21


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _len_prefix(field: int, length: int) -> bytes:
    """Tag and length of a length-delimited field whose `length` payload bytes follow."""
    return _varint(field << 3 | _LEN) + _varint(length)


def _len_field(field: int, data: bytes | memoryview) -> list[bytes | memoryview]:
    return [_len_prefix(field, len(data)), data] if len(data) else []


def result_bytes(sections: Mapping[str, bytes | memoryview], source: str, output: int) -> bytes:
    """A serialized circuit.v1.AttributionResult holding the sections `output` asks for."""
    parts: list[bytes | memoryview] = []
    if output in _WITH_GRAPH:
        graph = sections[GRAPH_PROTO]
        parts += [_len_prefix(1, len(graph)), graph]  # a set sub-message is written even when empty
    if output in _WITH_JSON:
        parts += _len_field(2, sections[GRAPH_JSON])
    parts += _len_field(3, source.encode())
    return b"".join(parts)


def _response(key: str, field: int, payload: bytes | memoryview, *extra: bytes | memoryview) -> bytes:
    """An AttributeResponse with `key` and one event field whose payload is `payload` + `extra`."""
    size = len(payload) + sum(len(e) for e in extra)
    return b"".join([*_len_field(_KEY, key.encode()), _len_prefix(field, size), payload, *extra])


def get_graph_response(result: bytes) -> bytes:
    """A serialized GetGraphResponse around a serialized AttributionResult."""
    return _len_prefix(1, len(result)) + result


async def result_messages(key: str, result: bytes, chunk_bytes: int) -> AsyncIterator[bytes]:
    """The serialized AttributeResponses that carry `result`: one `result`, or a header and chunks."""
    if len(result) <= chunk_bytes:
        yield _response(key, _RESULT, result)
        return
    digest = (await asyncio.to_thread(hashlib.sha256, result)).digest()
    count = -(-len(result) // chunk_bytes)
    header = pb.ChunkedResultHeader(total_bytes=len(result), chunk_count=count, sha256=digest,
                                     message_type=RESULT_MESSAGE_TYPE)
    yield _response(key, _HEADER, header.SerializeToString())
    view = memoryview(result)
    for index in range(count):
        data = view[index * chunk_bytes : (index + 1) * chunk_bytes]
        index_field = _varint(1 << 3 | _VARINT) + _varint(index) if index else b""
        yield _response(key, _CHUNK, index_field, _len_prefix(2, len(data)), data)
