"""Edge rows of visited nodes over every source, kept out of the process's memory when large.

While `max_feature_nodes` leaves features out, the influence estimate that orders the visits
needs the rows computed so far over every active feature (columns: n_active + (L + 1) P).
Held dense in memory they take rows x n_active floats, the part of a long prompt's graph that
does not fit. `RowStore` appends rows in blocks and serves them back in blocks:

1. In memory while the rows fit `memory_bytes`; beyond that the blocks go to a temporary file
   (read back with plain reads, not a memory map, so they never count in the process's RSS).
2. `influence(...)`: the reference's estimate (|A| row-normalised, walked back from the logit
   probabilities) in two passes over the blocks, never iterating over the whole store:
   the walk only moves through row nodes, so with S = |E[:, row columns]| / row sums
   (R x R_f, small) the total weight z of each row is found on S alone, and the influence of
   every column is then one product (z / sums) @ |E| over the blocks.
3. `gather(cols)`: the stored rows restricted to the graph's final columns.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator

import numpy as np
import torch

from circuit_serve.tracing.local_model import check_stop

F32 = 4


class RowStore:
    def __init__(self, n_cols: int, *, memory_bytes: int, spill_dir: str | None = None) -> None:
        self.n_cols = n_cols
        self.memory_bytes = memory_bytes
        self.spill_dir = spill_dir
        self.blocks: list[torch.Tensor] = []  # in memory
        self.file = None  # spilled blocks, in order, after the in-memory ones
        self.spilled: list[int] = []  # rows per spilled block
        self.held = 0
        self.sums: list[torch.Tensor] = []  # (b,) |row| sums per block, all blocks
        self.nodes: list[torch.Tensor] = []  # (b,) node index of each row

    @property
    def n_rows(self) -> int:
        return sum(len(s) for s in self.sums)

    @property
    def spilled_bytes(self) -> int:
        return sum(self.spilled) * self.n_cols * F32

    def append(self, rows: torch.Tensor, nodes: torch.Tensor) -> None:
        """rows (b, n_cols) float32, nodes (b,) their node index (feature: active index; logit k: n_cols + k)."""
        rows = rows.float()
        self.sums.append(rows.abs().sum(1).clamp(min=1e-8).cpu())
        self.nodes.append(nodes.cpu())
        nbytes = rows.numel() * F32
        if not self.spilled and self.held + nbytes <= self.memory_bytes:
            self.blocks.append(rows.cpu().clone())
            self.held += nbytes
            return
        if self.file is None:
            fd, path = tempfile.mkstemp(prefix="circuit-rows-", dir=self.spill_dir)
            self.file = os.fdopen(fd, "w+b")
            os.unlink(path)  # gone when closed, whatever happens
        self.file.seek(0, os.SEEK_END)
        self.file.write(rows.cpu().contiguous().numpy().tobytes())
        self.spilled.append(len(rows))

    def iter_blocks(self) -> Iterator[torch.Tensor]:
        """Every stored row block, in order, (b, n_cols) float32 (spilled ones read back one at a time)."""
        yield from self.blocks
        if self.file is None:
            return
        self.file.flush()
        self.file.seek(0)
        for b in self.spilled:
            buf = np.empty((b, self.n_cols), dtype=np.float32)
            self.file.readinto(memoryview(buf).cast("B"))
            yield torch.from_numpy(buf)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        self.blocks = []

    def influence(
        self, logit_probs: torch.Tensor, should_stop: Callable[[], bool] | None = None, max_iter: int = 128
    ) -> torch.Tensor:
        """(n_cols,) influence of every column node on the logits from the rows stored so far."""
        nodes = torch.cat(self.nodes)  # (R,)
        sums = torch.cat(self.sums)  # (R,)
        R, C = len(nodes), self.n_cols
        is_feat = nodes < C
        feat_rows = torch.nonzero(is_feat).flatten()  # rows whose node is a column too
        # pass 1: S[r, j] = |E[r, nodes[feat_rows[j]]]|, the walk between row nodes
        S = torch.empty(R, len(feat_rows))
        start = 0
        cols = nodes[feat_rows]
        for blk in self.iter_blocks():
            check_stop(should_stop, "influence estimate")
            S[start : start + len(blk)] = blk[:, cols].abs()
            start += len(blk)
        v = torch.zeros(R)  # weight arriving at each row's node, one step of the walk
        v[~is_feat] = logit_probs.float().cpu()[nodes[~is_feat] - C]
        z = v.clone()
        for _ in range(max_iter):
            check_stop(should_stop, "influence estimate")
            nxt = torch.zeros(R)
            nxt[feat_rows] = (v / sums) @ S
            v = nxt
            if not v.any():
                break
            z += v
        else:
            raise RuntimeError("feature influence did not converge")
        # pass 2: influence of every column = (z / sums) @ |E|
        w = z / sums
        out = torch.zeros(C)
        start = 0
        for blk in self.iter_blocks():
            check_stop(should_stop, "influence estimate")
            out += w[start : start + len(blk)] @ blk.abs()
            start += len(blk)
        return out

    def gather(self, cols: torch.Tensor, should_stop: Callable[[], bool] | None = None) -> torch.Tensor:
        """(n_rows, len(cols)) the stored rows at `cols` (the stop flag polled per block)."""
        out = torch.empty(self.n_rows, len(cols))
        start = 0
        for blk in self.iter_blocks():
            check_stop(should_stop, "gathering rows")
            out[start : start + len(blk)] = blk[:, cols]
            start += len(blk)
        return out
