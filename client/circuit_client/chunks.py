"""Reassembly of chunked attribution results (attribution.proto, "Large results").

A result larger than the server's chunk size comes as a `result_header`, then
`chunk_count` `result_chunk`s with index 0, 1, ... in order. Their data, concatenated,
is `total_bytes` long, has the header's CRC-32 and parses as the header's
`message_type` (circuit.v1.AttributionResult). Anything else is refused with DATA_LOSS.

    assembler = ResultAssembler()
    for msg in call:
        result = assembler.feed(msg)   # an AttributionResult once one is complete, else None
"""

from __future__ import annotations

import zlib

import grpc

from circuit_client.errors import CircuitRpcError
from circuit_proto.v1 import attribution_pb2 as pb

RESULT_MESSAGE_TYPE = pb.AttributionResult.DESCRIPTOR.full_name


def _broken(why: str) -> CircuitRpcError:
    return CircuitRpcError(grpc.StatusCode.DATA_LOSS, f"chunked result: {why}")


class ResultAssembler:
    """Feeds on AttributeResponse messages; returns the result when one is whole."""

    def __init__(self) -> None:
        self._header: pb.ChunkedResultHeader | None = None
        self._parts: list[bytes] = []
        self._received = 0

    def feed(self, msg: pb.AttributeResponse) -> pb.AttributionResult | None:
        kind = msg.WhichOneof("event")
        if kind == "result":
            if self._header is not None:
                raise _broken("a whole result arrived inside a chunked one")
            return msg.result
        if kind == "result_header":
            return self._start(msg.result_header)
        if kind == "result_chunk":
            return self._add(msg.result_chunk)
        if self._header is not None:
            raise _broken(f"a {kind or 'empty'} message arrived between the chunks")
        return None

    def _start(self, header: pb.ChunkedResultHeader) -> None:
        if self._header is not None:
            raise _broken("a second header arrived before the first result was complete")
        if header.message_type != RESULT_MESSAGE_TYPE:
            raise _broken(f"message type {header.message_type!r}; this client reads {RESULT_MESSAGE_TYPE}")
        if header.chunk_count == 0:
            raise _broken("the header announces no chunks")
        self._header, self._parts, self._received = header, [], 0
        return None

    def _add(self, chunk: pb.ResultChunk) -> pb.AttributionResult | None:
        header = self._header
        if header is None:
            raise _broken(f"chunk {chunk.index} arrived without a header")
        if chunk.index != len(self._parts):
            raise _broken(f"chunk {chunk.index} arrived where chunk {len(self._parts)} was due")
        self._parts.append(chunk.data)
        self._received += len(chunk.data)
        if self._received > header.total_bytes:
            raise _broken(f"more than the announced {header.total_bytes} bytes")
        if len(self._parts) < header.chunk_count:
            return None
        data = b"".join(self._parts)
        self._header, self._parts = None, []
        if len(data) != header.total_bytes:
            raise _broken(f"{len(data)} bytes, the header announced {header.total_bytes}")
        if zlib.crc32(data) != header.crc32:
            raise _broken("CRC-32 mismatch")
        return pb.AttributionResult.FromString(data)

    def check_done(self) -> None:
        """Raise if the stream ended inside a chunked result."""
        if self._header is not None:
            raise _broken(f"the stream ended after {len(self._parts)} of {self._header.chunk_count} chunks")
