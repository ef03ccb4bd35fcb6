"""Readers of the published transcoder files, one layer at a time, with shapes checked.

1. `read_plt_safetensors(path)`: circuit-tracer's `layer_{i}.safetensors` (`W_enc [F, d]`,
   `W_dec [F, d]`, `b_enc [F]`, `b_dec [d]`, optional `activation_function.threshold [F]`,
   optional `W_skip [d, d]` applied as `x @ W_skip.T`).
2. `read_plt_npz(path)`: GemmaScope's `params.npz` (`W_enc` stored transposed `[d, F]`,
   `W_dec [F, d]`, `b_enc`, `b_dec`, `threshold`): JumpReLU, no skip.
3. `read_clt_layer(dir, i, L)`: `W_enc_{i}.safetensors` (`W_enc_{i} [F, d]`, `b_enc_{i}`,
   `b_dec_{i}`, optional `threshold_{i}` (F or 1 x F), optional `W_skip_{i} [d, d]`) and
   `W_dec_{i}.safetensors` (`W_dec_{i} [F, L - i, d]`). A CLT skip is applied as
   `x @ W_skip_i` (circuit-tracer's `CrossLayerTranscoder.compute_skip` orientation); it is stored
   here transposed so that every set computes its skip as `x @ W_skip.T`.

Encoders, biases, thresholds and skips are read in the serving dtype onto the device. Decoders
are `LazyRows` when `lazy` (rows read from the file through safetensors `get_slice` when a graph
needs them; nothing else of the decoder is held), else tensors. A `.npz` cannot be sliced in
place, so its decoder is always held in memory. Every shape or key problem raises
`InvalidRequest` naming the file and the tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from circuit_serve.domain.errors import InvalidRequest


def bad(path: Path, tensor: str, msg: str) -> InvalidRequest:
    return InvalidRequest(f"{path}: tensor {tensor} {msg}", field="transcoders")


def expect_shape(path: Path, name: str, shape: tuple[int, ...], want: tuple[int, ...]) -> None:
    if tuple(shape) != tuple(want):
        raise bad(path, name, f"has shape {tuple(shape)}, expected {tuple(want)}")


class LazyRows:
    """Rows of a 2-D or 3-D tensor in a safetensors file, read on demand (`rows[idx]`)."""

    def __init__(self, path: Path, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str):
        self.path, self.name, self.shape = Path(path), name, tuple(shape)
        self.dtype, self.device = dtype, torch.device(device)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, idx) -> torch.Tensor:
        from safetensors import safe_open

        single = isinstance(idx, int) or (isinstance(idx, torch.Tensor) and idx.ndim == 0)
        rows = torch.as_tensor([int(idx)] if single else idx, dtype=torch.long).cpu().reshape(-1)
        if len(rows) == 0:
            return torch.empty((0, *self.shape[1:]), dtype=self.dtype, device=self.device)
        with safe_open(str(self.path), framework="pt") as f:
            out = f.get_slice(self.name)[rows].to(device=self.device, dtype=self.dtype)
        return out[0] if single else out

    def to(self, *, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> LazyRows:
        return LazyRows(self.path, self.name, self.shape, dtype or self.dtype, device or self.device)

    def __repr__(self) -> str:
        return f"LazyRows({self.path}:{self.name}, shape={self.shape}, dtype={self.dtype})"


@dataclass
class LayerTensors:
    """One layer of a transcoder set, as read (shapes checked)."""

    W_enc: torch.Tensor  # (F, d)
    b_enc: torch.Tensor  # (F,)
    W_dec: torch.Tensor | LazyRows  # PLT (F, d); CLT (F, L - i, d)
    b_dec: torch.Tensor  # (d,)
    threshold: torch.Tensor | None  # (F,)
    W_skip: torch.Tensor | None  # (d, d), applied as x @ W_skip.T
    files: list[Path]
    enc_file: Path  # where W_enc came from (for error messages)


def _missing(path: Path, name: str, keys) -> InvalidRequest:
    return bad(path, name, f"is missing (file has {sorted(keys)})")


def read_plt_safetensors(path: Path, *, dtype: torch.dtype, device, lazy: bool) -> LayerTensors:
    from safetensors import safe_open

    if not path.is_file():
        raise InvalidRequest(f"{path} is missing; the transcoder set is incomplete", field="transcoders")
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
            if name not in keys:
                raise _missing(path, name, keys)
        enc_shape = tuple(f.get_slice("W_enc").get_shape())
        if len(enc_shape) != 2:
            raise bad(path, "W_enc", f"has shape {enc_shape}, expected (d_transcoder, d_model)")
        F, d = enc_shape
        expect_shape(path, "W_dec", f.get_slice("W_dec").get_shape(), (F, d))

        def get(name: str, shape: tuple[int, ...]) -> torch.Tensor | None:
            if name not in keys:
                return None
            t = f.get_tensor(name)
            expect_shape(path, name, t.shape, shape)
            return t.to(device=device, dtype=dtype)

        W_dec = LazyRows(path, "W_dec", (F, d), dtype, device) if lazy else get("W_dec", (F, d))
        return LayerTensors(
            W_enc=get("W_enc", (F, d)),
            b_enc=get("b_enc", (F,)),
            W_dec=W_dec,
            b_dec=get("b_dec", (d,)),
            threshold=get("activation_function.threshold", (F,)),
            W_skip=get("W_skip", (d, d)),
            files=[path],
            enc_file=path,
        )


def read_plt_npz(path: Path, *, dtype: torch.dtype, device) -> LayerTensors:
    """GemmaScope `params.npz`: W_enc is stored (d_model, d_sae) and is transposed here."""
    import numpy as np

    if not path.is_file():
        raise InvalidRequest(f"{path} is missing; the transcoder set is incomplete", field="transcoders")
    with np.load(path) as z:
        keys = set(z.files)
        for name in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
            if name not in keys:
                raise _missing(path, name, keys)
        raw = {k: z[k] for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")}
    if raw["W_enc"].ndim != 2:
        raise bad(
            path,
            "W_enc",
            f"has shape {raw['W_enc'].shape}, expected (d_model, d_sae) (GemmaScope stores it transposed)",
        )
    d, F = raw["W_enc"].shape
    expect_shape(path, "W_dec", raw["W_dec"].shape, (F, d))
    expect_shape(path, "b_enc", raw["b_enc"].shape, (F,))
    expect_shape(path, "b_dec", raw["b_dec"].shape, (d,))
    expect_shape(path, "threshold", raw["threshold"].shape, (F,))

    def t(a) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dtype)

    return LayerTensors(
        W_enc=t(raw["W_enc"].T),
        b_enc=t(raw["b_enc"]),
        W_dec=t(raw["W_dec"]),
        b_dec=t(raw["b_dec"]),
        threshold=t(raw["threshold"]),
        W_skip=None,
        files=[path],
        enc_file=path,
    )


def read_clt_layer(root: Path, i: int, n_layers: int, *, dtype: torch.dtype, device, lazy: bool) -> LayerTensors:
    from safetensors import safe_open

    pe, pd = root / f"W_enc_{i}.safetensors", root / f"W_dec_{i}.safetensors"
    for p in (pe, pd):
        if not p.is_file():
            raise InvalidRequest(f"{p} is missing; the transcoder set is incomplete", field="transcoders")
    with safe_open(str(pe), framework="pt") as f:
        keys = set(f.keys())
        for name in (f"W_enc_{i}", f"b_enc_{i}", f"b_dec_{i}"):
            if name not in keys:
                raise _missing(pe, name, keys)
        W_enc = f.get_tensor(f"W_enc_{i}")
        if W_enc.ndim != 2:
            raise bad(pe, f"W_enc_{i}", f"has shape {tuple(W_enc.shape)}, expected (d_transcoder, d_model)")
        F, d = W_enc.shape
        b_enc, b_dec = f.get_tensor(f"b_enc_{i}"), f.get_tensor(f"b_dec_{i}")
        expect_shape(pe, f"b_enc_{i}", b_enc.shape, (F,))
        expect_shape(pe, f"b_dec_{i}", b_dec.shape, (d,))
        thr = f.get_tensor(f"threshold_{i}").reshape(-1) if f"threshold_{i}" in keys else None
        if thr is not None:
            expect_shape(pe, f"threshold_{i}", thr.shape, (F,))
        skip = f.get_tensor(f"W_skip_{i}") if f"W_skip_{i}" in keys else None
        if skip is not None:
            expect_shape(pe, f"W_skip_{i}", skip.shape, (d, d))
            skip = skip.T  # applied as x @ W_skip_i; stored for x @ W_skip.T
    with safe_open(str(pd), framework="pt") as f:
        if f"W_dec_{i}" not in set(f.keys()):
            raise _missing(pd, f"W_dec_{i}", f.keys())
        expect_shape(pd, f"W_dec_{i}", f.get_slice(f"W_dec_{i}").get_shape(), (F, n_layers - i, d))
        W_dec = (
            LazyRows(pd, f"W_dec_{i}", (F, n_layers - i, d), dtype, device)
            if lazy
            else f.get_tensor(f"W_dec_{i}").to(device=device, dtype=dtype)
        )

    def mv(t):
        return None if t is None else t.contiguous().to(device=device, dtype=dtype)

    return LayerTensors(
        W_enc=mv(W_enc),
        b_enc=mv(b_enc),
        W_dec=W_dec,
        b_dec=mv(b_dec),
        threshold=mv(thr),
        W_skip=mv(skip),
        files=[pe, pd],
        enc_file=pe,
    )
