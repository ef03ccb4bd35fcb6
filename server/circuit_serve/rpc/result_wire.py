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
(attribution.proto, "Large results"): a CRC-32 over the result, then slicing. The sections
are copied once, into the message that carries them.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping

from circuit_proto.v1 import attribution_pb2 as pb
from circuit_serve.attribution.types import GRAPH_JSON, GRAPH_PROTO

RESULT_MESSAGE_TYPE = pb.AttributionResult.DESCRIPTOR.full_name  # "circuit.v1.AttributionResult"
Buffer = bytes | memoryview
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


def _len_field(field: int, data: Buffer) -> list[Buffer]:
    return [_len_prefix(field, len(data)), data] if len(data) else []


def result_parts(sections: Mapping[str, Buffer], source: str, output: int) -> list[Buffer]:
    """The pieces of a serialized circuit.v1.AttributionResult holding the sections `output` asks
    for: field prefixes and the sections themselves (not copied)."""
    parts: list[Buffer] = []
    if output in _WITH_GRAPH:
        graph = sections[GRAPH_PROTO]
        parts += [_len_prefix(1, len(graph)), graph]  # a set sub-message is written even when empty
    if output in _WITH_JSON:
        parts += _len_field(2, sections[GRAPH_JSON])
    parts += _len_field(3, source.encode())
    return parts


def result_bytes(sections: Mapping[str, Buffer], source: str, output: int) -> bytes:
    """A serialized circuit.v1.AttributionResult (see `result_parts`)."""
    return b"".join(result_parts(sections, source, output))


def _response(key: str, field: int, *payload: Buffer) -> bytes:
    """An AttributeResponse with `key` and one event field whose payload is the pieces joined."""
    size = sum(len(p) for p in payload)
    return b"".join([*_len_field(_KEY, key.encode()), _len_prefix(field, size), *payload])


def get_graph_response(result: bytes) -> bytes:
    """A serialized GetGraphResponse around a serialized AttributionResult."""
    return _len_prefix(1, len(result)) + result


def _pieces(parts: list[Buffer], size: int) -> Iterator[list[memoryview]]:
    """`parts`, as if concatenated, cut into runs of `size` bytes (the last may be shorter)."""
    run: list[memoryview] = []
    room = size
    for part in parts:
        view = memoryview(part)
        while len(view):
            piece = view[:room]
            run.append(piece)
            room -= len(piece)
            view = view[len(piece) :]
            if room == 0:
                yield run
                run, room = [], size
    if run:
        yield run


def result_messages(key: str, parts: list[Buffer], chunk_bytes: int) -> Iterator[bytes]:
    """The serialized AttributeResponses that carry the result made of `parts`: one `result`, or a
    `result_header` and `result_chunk`s of at most `chunk_bytes`. Each section is copied once,
    into the message that carries it."""
    total = sum(len(p) for p in parts)
    if total <= chunk_bytes:
        yield _response(key, _RESULT, *parts)
        return
    crc = 0
    for part in parts:  # about 1 ms for 9 MB
        crc = zlib.crc32(part, crc)
    count = -(-total // chunk_bytes)
    header = pb.ChunkedResultHeader(total_bytes=total, chunk_count=count, crc32=crc, message_type=RESULT_MESSAGE_TYPE)
    yield _response(key, _HEADER, header.SerializeToString())
    for index, run in enumerate(_pieces(parts, chunk_bytes)):
        index_field = _varint(1 << 3 | _VARINT) + _varint(index) if index else b""
        yield _response(key, _CHUNK, index_field, _len_prefix(2, sum(len(r) for r in run)), *run)
