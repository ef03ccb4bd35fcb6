"""Weight-file identities: computed once, reused while size and mtime are unchanged."""

from __future__ import annotations

import os

import pytest

from circuit_serve.tracing import identity
from circuit_serve.tracing.identity import file_identity
from tests.tracing.tracing_helpers import FIXTURES


def _copy_set(tmp_path):
    d = tmp_path / "tcs"
    d.mkdir()
    for p in (FIXTURES / "llama" / "transcoders").iterdir():
        (d / p.name).write_bytes(p.read_bytes())
    return d


def test_cached_identity_is_the_same_digest_and_skips_reading(tmp_path, monkeypatch):
    d = _copy_set(tmp_path)
    files = sorted(d.iterdir())
    cache = tmp_path / "cache"
    plain = file_identity(files)
    assert file_identity(files, cache) == plain  # first call hashes and stores
    assert len(list((cache / "identities").iterdir())) == 1

    def no_reading(paths):
        raise AssertionError("the weights were read again")

    monkeypatch.setattr(identity, "_hash_files", no_reading)
    assert file_identity(files, cache) == plain  # restart: from the cache
    # a rewritten file (new mtime) is hashed again
    target = d / "layer_1.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 1
    target.write_bytes(bytes(data))
    os.utime(target, ns=(1, 1))
    with pytest.raises(AssertionError, match="read again"):
        file_identity(files, cache)
    monkeypatch.undo()
    assert file_identity(files, cache) != plain


def test_unwritable_cache_is_skipped(tmp_path):
    d = _copy_set(tmp_path)
    files = sorted(d.iterdir())
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("x")  # a cache "directory" that cannot be created
    assert file_identity(files, blocked) == file_identity(files)


def test_replacement_model_ids_do_not_change_with_the_cache(tmp_path):
    from circuit_serve.tracing import ReplacementModel

    fx = FIXTURES / "llama"
    a = ReplacementModel.from_pretrained(fx / "model", fx / "transcoders")
    b = ReplacementModel.from_pretrained(fx / "model", fx / "transcoders", identity_cache=tmp_path / "c")
    c = ReplacementModel.from_pretrained(fx / "model", fx / "transcoders", identity_cache=tmp_path / "c")
    assert a.model_id == b.model_id == c.model_id and a.transcoder_id == b.transcoder_id == c.transcoder_id
