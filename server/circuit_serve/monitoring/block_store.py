"""Watched values of full KV blocks, so that monitored requests keep vLLM's prefix cache.

vLLM's prefix cache skips the forward pass of a request's cached prompt blocks (full blocks of
`block_size` tokens, found by a chained hash of their tokens; vLLM always computes the last prompt
token, so at most `(n_prompt - 1) // block_size` blocks are reused), and with it the taps. The
server already receives every computed position's values over the value channel; this store
keeps the server watchlist's columns of each full block a monitored request computed, keyed by a
chained hash of the block's tokens (salt-free, independent of vLLM's own hash): a value at
position p depends only on tokens 0..p, so a block's values hold for every request that starts
with the same tokens.

How a monitored request is sent (`route`), with `k` the leading prompt blocks whose values are
stored (copied into the request, so eviction cannot take them away):

1. `shared` (no `cache_salt`): every block vLLM could reuse has stored values, whoever
   computed its KV (an unmonitored request included);
2. `namespace` (`cache_salt` = the store's namespace, one for all monitored requests): vLLM
   may reuse only blocks computed by monitored requests of this namespace, whose values the
   store has (invariant below); its other blocks are computed and stored for the next request;
3. `private` (a per-request `cache_salt`: nothing is reused): a block beyond `k` is being
   computed by a running namespace request right now (its values are not here yet), the
   request adds features of its own, or vLLM runs without prefix caching.

The invariant of the namespace: every full block vLLM holds under it has stored values. A
namespace request marks its blocks beyond `k` pending while it runs (so no other request routes
through the namespace onto them) and stores them when it finishes; anything that could break the
invariant starts a new namespace (`renew`: a new salt, vLLM's old blocks under it are never
reused): a namespace request that ends without its values (aborted, failed), or the store
evicting blocks (it drops the oldest quarter at once when full).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SHARED, NAMESPACE, PRIVATE = "shared", "namespace", "private"


@dataclass(frozen=True)
class Route:
    kind: str  # SHARED | NAMESPACE | PRIVATE
    salt: str | None  # vLLM cache_salt (None: shared)
    pre: np.ndarray  # (k * block_size, n_server) stored pre-activations of the leading blocks
    active: np.ndarray  # (k * block_size, n_server) stored active masks
    pending: tuple[bytes, ...]  # blocks this request computes for the namespace


class BlockStore:
    """LRU store of `(block_size, n_columns)` pre-activations and active masks by block hash.
    Owned by the server (one event loop; not thread-safe)."""

    def __init__(self, block_size: int, n_columns: int, capacity_bytes: int) -> None:
        self.block_size, self.n_columns = block_size, n_columns
        self.block_bytes = block_size * n_columns * 5  # float32 + bool
        self.capacity = capacity_bytes // self.block_bytes if n_columns else 0
        self._blocks: OrderedDict[bytes, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._pending: dict[tuple[str, bytes], int] = {}  # (namespace, block) -> requests computing it
        self.generation = 0
        self.renewals = 0

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    @property
    def namespace(self) -> str:
        return f"circuit-monitor-{self.generation}"

    def __len__(self) -> int:
        return len(self._blocks)

    def hashes(self, tokens: Sequence[int]) -> list[bytes]:
        """Chained hashes of the full blocks of `tokens` (block i hashes block i-1's hash and its tokens)."""
        ids = np.asarray(tokens, dtype=np.int64)
        out, parent = [], b""
        for b in range(len(ids) // self.block_size):
            parent = hashlib.blake2b(
                parent + ids[b * self.block_size : (b + 1) * self.block_size].tobytes(), digest_size=16
            ).digest()
            out.append(parent)
        return out

    def route(self, prompt: Sequence[int], *, private_salt: str) -> Route:
        """How to send a monitored request of the server watchlist only (see the module docstring)."""
        bs = self.block_size
        hashes = self.hashes(prompt)
        reusable = (len(prompt) - 1) // bs  # blocks vLLM may reuse
        pre, act = [], []
        for h in hashes[:reusable]:
            block = self._blocks.get(h)
            if block is None:
                break
            self._blocks.move_to_end(h)
            pre.append(block[0])
            act.append(block[1])
        k = len(pre)
        stored_pre = np.concatenate(pre) if pre else np.zeros((0, self.n_columns), np.float32)
        stored_act = np.concatenate(act) if act else np.zeros((0, self.n_columns), bool)
        if k == reusable:
            return Route(SHARED, None, stored_pre, stored_act, ())
        rest = tuple(h for h in hashes[k:] if h not in self._blocks)
        ns = self.namespace
        if any((ns, h) in self._pending for h in hashes[k:reusable]):
            return Route(PRIVATE, private_salt, stored_pre, stored_act, ())
        for h in rest:
            self._pending[ns, h] = self._pending.get((ns, h), 0) + 1
        return Route(NAMESPACE, ns, stored_pre, stored_act, rest)

    def private(self, salt: str) -> Route:
        empty = np.zeros((0, self.n_columns), np.float32)
        return Route(PRIVATE, salt, empty, empty.astype(bool), ())

    def put(self, tokens: Sequence[int], pre: np.ndarray, active: np.ndarray) -> None:
        """Store the full blocks of `tokens` (positions 0..len-1) from `(len, n_columns)` values."""
        bs = self.block_size
        for b, h in enumerate(self.hashes(tokens)):
            if h in self._blocks:
                self._blocks.move_to_end(h)
                continue
            rows = slice(b * bs, (b + 1) * bs)
            self._blocks[h] = (pre[rows].copy(), active[rows].copy())
        if len(self._blocks) > self.capacity:
            for _ in range(len(self._blocks) - self.capacity * 3 // 4):
                self._blocks.popitem(last=False)
            self.renew()  # vLLM may still hold an evicted block under the old namespace

    def release(self, route: Route, *, complete: bool) -> None:
        """A request of `route` ended; `complete`: its values of every computed block were stored."""
        for h in route.pending:
            key = (route.salt or "", h)
            n = self._pending.get(key, 0) - 1
            if n > 0:
                self._pending[key] = n
            else:
                self._pending.pop(key, None)
        if route.kind == NAMESPACE and not complete and route.salt == self.namespace:
            self.renew()

    def renew(self) -> None:
        """A new namespace: vLLM's blocks under the old one are never reused by monitored requests."""
        self.generation += 1
        self.renewals += 1
