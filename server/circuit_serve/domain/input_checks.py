"""Size checks shared by every service, run before any work (tokenizing included) starts.

Each raises `InvalidRequest` naming the field, the value and the limit.
"""

from __future__ import annotations

from collections.abc import Sized

from circuit_serve.domain.errors import InvalidRequest


def check_text_bytes(text: str | None, limit: int, *, field: str) -> None:
    """`text` is at most `limit` UTF-8 bytes (a cheap bound first: a char is 1 to 4 bytes)."""
    if not text or len(text) * 4 <= limit:
        return
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > limit:
        raise InvalidRequest(f"is {size} bytes (UTF-8); the limit is {limit} bytes; shorten it", field=field)


def check_count(items: Sized | None, limit: int, *, field: str, what: str = "entries") -> None:
    """`items` has at most `limit` entries."""
    n = len(items) if items is not None else 0
    if n > limit:
        raise InvalidRequest(f"has {n} {what}; the limit is {limit}", field=field)
