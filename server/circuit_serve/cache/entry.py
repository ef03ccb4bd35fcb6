"""Byte format of one cached graph entry.

An entry holds named sections (for example the protobuf graph and the frontend
JSON), compressed together behind a fixed header:

    offset size  field
    0      4     magic b"CSGE"
    4      2     entry-format version (ENTRY_VERSION), big-endian
    6      2     graph-format version of the sections (set by the producer)
    8      32    SHA-256 digest of the graph key the entry was stored under
    40     4     CRC-32 of the compressed body
    44     4     length of the uncompressed body
    48     ...   zlib-compressed body

Body: u16 section count, then per section u16 name length, UTF-8 name,
u32 data length, data. All integers big-endian.

`decode` raises `BadEntry` for anything that is not exactly what this version
writes (wrong magic, old format, another key, truncated, bad checksum): the
cache treats that as a miss, deletes the entry and counts it. Never pickle.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Mapping

MAGIC = b"CSGE"
ENTRY_VERSION = 1
_HEADER = struct.Struct(">4sHH32sII")
_SECTION_NAME = struct.Struct(">H")
_SECTION_DATA = struct.Struct(">I")
COMPRESSION_LEVEL = 6


class BadEntry(ValueError):
    """A cached value that must not be served (corrupt, truncated or another format)."""


def _key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def encode(key: str, sections: Mapping[str, bytes], *, graph_format: int) -> bytes:
    """Serialize and compress `sections` (name -> bytes) into one entry for `key`."""
    parts = [_SECTION_NAME.pack(len(sections))]
    for name in sorted(sections):
        raw_name = name.encode()
        data = bytes(sections[name])
        parts += [_SECTION_NAME.pack(len(raw_name)), raw_name, _SECTION_DATA.pack(len(data)), data]
    body = b"".join(parts)
    packed = zlib.compress(body, COMPRESSION_LEVEL)
    header = _HEADER.pack(MAGIC, ENTRY_VERSION, graph_format, _key_digest(key), zlib.crc32(packed), len(body))
    return header + packed


def decode(key: str, blob: bytes, *, graph_format: int) -> dict[str, bytes]:
    """Sections of an entry written by `encode` for the same key and graph format."""
    if len(blob) < _HEADER.size:
        raise BadEntry(f"entry of {len(blob)} bytes is shorter than the {_HEADER.size}-byte header")
    magic, version, fmt, digest, crc, body_len = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise BadEntry("not a graph-cache entry (bad magic)")
    if version != ENTRY_VERSION:
        raise BadEntry(f"entry format {version}, this server reads {ENTRY_VERSION}")
    if fmt != graph_format:
        raise BadEntry(f"graph format {fmt}, this server writes {graph_format}")
    if digest != _key_digest(key):
        raise BadEntry("entry was stored for another key")
    packed = memoryview(blob)[_HEADER.size :]
    if zlib.crc32(packed) != crc:
        raise BadEntry("checksum mismatch")
    try:
        body = zlib.decompress(packed)
    except zlib.error as exc:
        raise BadEntry(f"cannot decompress: {exc}") from exc
    if len(body) != body_len:
        raise BadEntry(f"body is {len(body)} bytes, header says {body_len}")
    return _split(body)


def _split(body: bytes) -> dict[str, bytes]:
    try:
        (count,) = _SECTION_NAME.unpack_from(body, 0)
        pos = _SECTION_NAME.size
        sections: dict[str, bytes] = {}
        for _ in range(count):
            (name_len,) = _SECTION_NAME.unpack_from(body, pos)
            pos += _SECTION_NAME.size
            name = body[pos : pos + name_len].decode()
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
