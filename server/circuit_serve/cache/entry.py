"""Byte format of one cached graph entry.

An entry holds named sections (for example the protobuf graph and the frontend
JSON) behind a fixed header, stored as they are or zlib-compressed together:

    offset size  field
    0      4     magic b"CSGE"
    4      2     entry-format version (ENTRY_VERSION = 2), big-endian
    6      2     graph-format version of the sections (set by the producer)
    8      32    SHA-256 digest of the graph key the entry was stored under
    40     1     codec of the body: 0 = stored as is, 1 = zlib
    41     3     zero
    44     4     CRC-32 of the body as stored (after compression, if any)
    48     4     length of the uncompressed body
    52     ...   body

Body (after decompression): u16 section count, then per section u16 name
length, UTF-8 name, u32 data length, data. All integers big-endian.

Version 2 added the codec byte (version 1 was always zlib). A cache hit is
meant to cost about what moving the entry's bytes costs: with codec 0 a read
checks the CRC and slices the sections out of the blob without copying them
(`decode` returns memoryviews into it); zlib trades a decompression per hit for
a smaller entry (measured in bench/cache.py).

`decode` raises `BadEntry` for anything that is not exactly what this version
writes (wrong magic, old format, another key, unknown codec, truncated, bad
checksum): the cache treats that as a miss, deletes the entry and counts it, so
entries of an older version are recomputed, never misread. Never pickle.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Mapping
from enum import IntEnum

MAGIC = b"CSGE"
ENTRY_VERSION = 2
_HEADER = struct.Struct(">4sHH32sB3sII")
_SECTION_NAME = struct.Struct(">H")
_SECTION_DATA = struct.Struct(">I")
COMPRESSION_LEVEL = 1  # the fastest; the JSON section (most of a graph's bytes) still shrinks several times
HEADER_BYTES = _HEADER.size

Buffer = bytes | memoryview


class Codec(IntEnum):
    STORED = 0
    ZLIB = 1


class BadEntry(ValueError):
    """A cached value that must not be served (corrupt, truncated or another format)."""


def _key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def encode(key: str, sections: Mapping[str, Buffer], *, graph_format: int, codec: Codec = Codec.STORED) -> bytes:
    """Serialize `sections` (name -> bytes) into one entry for `key`, compressed when `codec` says so."""
    parts: list[Buffer] = [_SECTION_NAME.pack(len(sections))]
    for name in sorted(sections):
        raw_name = name.encode()
        data = sections[name]
        parts += [_SECTION_NAME.pack(len(raw_name)), raw_name, _SECTION_DATA.pack(len(data)), data]
    body = b"".join(parts)
    stored = zlib.compress(body, COMPRESSION_LEVEL) if codec == Codec.ZLIB else body
    header = _HEADER.pack(
        MAGIC, ENTRY_VERSION, graph_format, _key_digest(key), int(codec), bytes(3), zlib.crc32(stored), len(body)
    )
    return header + stored


def decode(key: str, blob: Buffer, *, graph_format: int) -> dict[str, memoryview]:
    """Sections of an entry written by `encode` for the same key and graph format.

    The values are read-only views into `blob` (codec 0) or into the decompressed body.
    """
    if len(blob) < _HEADER.size:
        raise BadEntry(f"entry of {len(blob)} bytes is shorter than the {_HEADER.size}-byte header")
    magic, version, fmt, digest, codec, zero, crc, body_len = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise BadEntry("not a graph-cache entry (bad magic)")
    if version != ENTRY_VERSION:
        raise BadEntry(f"entry format {version}, this server reads {ENTRY_VERSION}")
    if fmt != graph_format:
        raise BadEntry(f"graph format {fmt}, this server writes {graph_format}")
    if digest != _key_digest(key):
        raise BadEntry("entry was stored for another key")
    if codec not in (Codec.STORED, Codec.ZLIB) or zero != bytes(3):
        raise BadEntry(f"unknown codec {codec} (or reserved bytes set)")
    stored = memoryview(blob)[_HEADER.size :].toreadonly()
    if zlib.crc32(stored) != crc:
        raise BadEntry("checksum mismatch")
    if codec == Codec.ZLIB:
        try:
            body = memoryview(zlib.decompress(stored)).toreadonly()
        except zlib.error as exc:
            raise BadEntry(f"cannot decompress: {exc}") from exc
    else:
        body = stored
    if len(body) != body_len:
        raise BadEntry(f"body is {len(body)} bytes, header says {body_len}")
    return _split(body)


def _split(body: memoryview) -> dict[str, memoryview]:
    try:
        (count,) = _SECTION_NAME.unpack_from(body, 0)
        pos = _SECTION_NAME.size
        sections: dict[str, memoryview] = {}
        for _ in range(count):
            (name_len,) = _SECTION_NAME.unpack_from(body, pos)
            pos += _SECTION_NAME.size
            if pos + name_len > len(body):
                raise BadEntry("a section name runs past the end of the body")
            name = bytes(body[pos : pos + name_len]).decode()
            pos += name_len
            (data_len,) = _SECTION_DATA.unpack_from(body, pos)
            pos += _SECTION_DATA.size
            if pos + data_len > len(body):
                raise BadEntry(f"section {name!r} runs past the end of the body")
            sections[name] = body[pos : pos + data_len]
            pos += data_len
    except (struct.error, UnicodeDecodeError) as exc:
        raise BadEntry(f"malformed body: {exc}") from exc
    if pos != len(body):
        raise BadEntry(f"{len(body) - pos} trailing bytes after the sections")
    return sections
