"""Transcoder sets in circuit-tracer's on-disk format: per-layer (PLT) and cross-layer (CLT).

A directory holds `config.yaml` and safetensors files:

1. `config.yaml`: `model_kind` (`transcoder_set` = PLT, `cross_layer_transcoder` = CLT),
   `feature_input_hook` (`hook_resid_mid`, `ln2.hook_normalized`, `mlp.hook_in`),
   `feature_output_hook` (`hook_mlp_out`, `mlp.hook_out`), `scan` (an identifier). Our one
   extension: `activation_function: topk` with `top_k: K` selects TopK (the published sets are
   ReLU, or JumpReLU when a threshold tensor is present).
2. PLT: `layer_{i}.safetensors` with `W_enc [d_tc, d]`, `W_dec [d_tc, d]`, `b_enc [d_tc]`,
   `b_dec [d]`, optional `activation_function.threshold [d_tc]` (JumpReLU), optional
   `W_skip [d, d]` (skip output = `x @ W_skip.T`).
3. CLT: `W_enc_{i}.safetensors` with `W_enc_{i} [d_tc, d]`, `b_enc_{i} [d_tc]`, `b_dec_{i} [d]`,
   optional `threshold_{i} [d_tc]`; `W_dec_{i}.safetensors` with `W_dec_{i} [d_tc, L - i, d]`
   (a layer-i feature writes to the MLP outputs of layers i..L-1).

Features: `pre = x @ W_enc.T + b_enc`, `a = act(pre)`; layer l's reconstruction is
`sum_s a_s W_dec[s -> l] + b_dec[l] (+ x_l @ W_skip[l].T)`. Every shape problem is reported as
`InvalidRequest` naming the file and the tensor.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from circuit_serve.errors import InvalidRequest

INPUT_HOOKS = ("hook_resid_mid", "ln2.hook_normalized", "mlp.hook_in")
OUTPUT_HOOKS = ("hook_mlp_out", "mlp.hook_out")
ACTIVATIONS = ("relu", "jumprelu", "topk")


@dataclass
class TranscoderSet:
    """All layers' transcoders, held as plain tensors (no nn.Module, no gradients)."""

    kind: str  # "plt" | "clt"
    W_enc: list[torch.Tensor]  # per layer (d_tc, d)
    b_enc: list[torch.Tensor]  # per layer (d_tc,)
    W_dec: list[torch.Tensor]  # PLT: (d_tc, d); CLT: (d_tc, L - l, d)
    b_dec: list[torch.Tensor]  # per layer (d,)
    activation: str  # "relu" | "jumprelu" | "topk"
    feature_input_hook: str
    feature_output_hook: str
    threshold: list[torch.Tensor] | None = None  # per layer (d_tc,) for JumpReLU
    top_k: int | None = None
    W_skip: list[torch.Tensor] | None = None  # per layer (d, d), PLT only
    scan: str | None = None
    path: str | None = None
    identity: str = ""  # sha256 over the weight files (see `file_identity`)
    sources: dict[str, str] = field(default_factory=dict)  # tensor name -> file it came from

    @property
    def n_layers(self) -> int:
        return len(self.W_enc)

    @property
    def d_model(self) -> int:
        return self.W_enc[0].shape[1]

    @property
    def d_transcoder(self) -> int:
        return self.W_enc[0].shape[0]

    @property
    def is_clt(self) -> bool:
        return self.kind == "clt"

    @property
    def has_skip(self) -> bool:
        return self.W_skip is not None

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc[0].dtype

    @property
    def device(self) -> torch.device:
        return self.W_enc[0].device

    # -- the transcoder maths -------------------------------------------------------------
    def pre_activations(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """(..., d) transcoder input -> (..., d_tc) pre-activations `x @ W_enc.T + b_enc`."""
        return torch.nn.functional.linear(x.to(self.dtype), self.W_enc[layer], self.b_enc[layer])

    def activate(self, layer: int, pre: torch.Tensor) -> torch.Tensor:
        """(..., d_tc) pre-activations -> activations (ReLU, JumpReLU or TopK)."""
        if self.activation == "jumprelu":
            assert self.threshold is not None
            return pre * (pre > self.threshold[layer])
        if self.activation == "topk":
            assert self.top_k is not None
            vals, idx = pre.topk(self.top_k, dim=-1)
            return torch.zeros_like(pre).scatter_(-1, idx, vals.clamp(min=0))
        return torch.relu(pre)

    def encode(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        return self.activate(layer, self.pre_activations(layer, x))

    def skip(self, layer: int, x: torch.Tensor) -> torch.Tensor | None:
        """Skip-connection output `x @ W_skip.T` (None without a skip)."""
        if self.W_skip is None:
            return None
        return x.to(self.dtype) @ self.W_skip[layer].T

    def decoder_rows(self, layer: int, features: torch.Tensor) -> torch.Tensor:
        """Decoder vectors of layer-`layer` features: PLT (n, 1, d); CLT (n, L - layer, d)."""
        W = self.W_dec[layer][features]
        return W[:, None, :] if W.ndim == 2 else W

    def to(self, *, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> TranscoderSet:
        def mv(ts):
            return None if ts is None else [t.to(device=device, dtype=dtype) for t in ts]

        for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold", "W_skip"):
            setattr(self, name, mv(getattr(self, name)))
        return self

    # -- validation against a model -------------------------------------------------------
    def check_matches(self, n_layers: int, d_model: int, what: str = "the model") -> None:
        """Raise InvalidRequest naming the transcoder file/tensor if shapes do not fit the model."""
        where = self.path or "transcoders"
        if self.n_layers != n_layers:
            raise InvalidRequest(
                f"{where} has transcoders for {self.n_layers} layers but {what} has {n_layers}; "
                "use the transcoder set trained for this model",
                field="transcoders",
            )
        if self.d_model != d_model:
            name = "W_enc_0" if self.is_clt else "W_enc"
            raise InvalidRequest(
                f"{self.sources.get('W_enc.0', where)}: tensor {name} has d_model {self.d_model} but {what} "
                f"has hidden size {d_model}; use the transcoder set trained for this model",
                field="transcoders",
            )


def _bad(path: Path, tensor: str, msg: str) -> InvalidRequest:
    return InvalidRequest(f"{path}: tensor {tensor} {msg}", field="transcoders")


def _expect(path: Path, name: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != shape:
        raise _bad(path, name, f"has shape {tuple(t.shape)}, expected {shape}")


def _read(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise InvalidRequest(f"{path} is missing; the transcoder directory is incomplete", field="transcoders")
    return load_file(str(path))


def _get(sd: dict[str, torch.Tensor], path: Path, name: str) -> torch.Tensor:
    if name not in sd:
        raise _bad(path, name, f"is missing (file has {sorted(sd)})")
    return sd[name]


def file_identity(paths: list[Path]) -> str:
    """sha256 over the names and bytes of the given files (streamed, 16 MiB at a time)."""
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda q: q.name):
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()


def load_transcoders(
    path: str | Path, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> TranscoderSet:
    """Load a PLT or CLT directory (see the module docstring) onto `device` in `dtype`."""
    import yaml

    root = Path(path)
    cfg_path = root / "config.yaml"
    if not cfg_path.is_file():
        raise InvalidRequest(f"{cfg_path} not found: a transcoder directory needs config.yaml", field="transcoders")
    cfg = yaml.safe_load(cfg_path.read_text()) or {}
    kind = cfg.get("model_kind")
    in_hook, out_hook = cfg.get("feature_input_hook"), cfg.get("feature_output_hook")
    if kind not in ("transcoder_set", "cross_layer_transcoder"):
        raise InvalidRequest(
            f"{cfg_path}: model_kind {kind!r} is not supported; use transcoder_set or cross_layer_transcoder",
            field="transcoders",
        )
    if in_hook not in INPUT_HOOKS:
        raise InvalidRequest(f"{cfg_path}: feature_input_hook {in_hook!r} is not one of {INPUT_HOOKS}", field="transcoders")
    if out_hook not in OUTPUT_HOOKS:
        raise InvalidRequest(f"{cfg_path}: feature_output_hook {out_hook!r} is not one of {OUTPUT_HOOKS}", field="transcoders")
    act_cfg = str(cfg.get("activation_function", "")).lower().replace("_", "")
    top_k = cfg.get("top_k", cfg.get("k"))
    if act_cfg and act_cfg not in ("relu", "jumprelu", "topk"):
        raise InvalidRequest(f"{cfg_path}: activation_function {act_cfg!r} is not one of {ACTIVATIONS}", field="transcoders")
    if act_cfg == "topk" and not (isinstance(top_k, int) and top_k > 0):
        raise InvalidRequest(f"{cfg_path}: activation_function topk needs a positive integer top_k", field="transcoders")

    sources: dict[str, str] = {}
    W_enc, b_enc, W_dec, b_dec, thr, skip = [], [], [], [], [], []
    files: list[Path] = []
    if kind == "transcoder_set":
        n = len(list(root.glob("layer_*.safetensors")))
        if n == 0:
            raise InvalidRequest(f"{root} has no layer_*.safetensors files", field="transcoders")
        for i in range(n):
            p = root / f"layer_{i}.safetensors"
            sd = _read(p)
            files.append(p)
            we = _get(sd, p, "W_enc")
            if we.ndim != 2:
                raise _bad(p, "W_enc", f"has shape {tuple(we.shape)}, expected (d_transcoder, d_model)")
            d_tc, d = we.shape
            if i > 0 and (d_tc, d) != tuple(W_enc[0].shape):
                raise _bad(p, "W_enc", f"has shape {(d_tc, d)} but layer_0 has {tuple(W_enc[0].shape)}")
            wd, be, bd = _get(sd, p, "W_dec"), _get(sd, p, "b_enc"), _get(sd, p, "b_dec")
            _expect(p, "W_dec", wd, (d_tc, d))
            _expect(p, "b_enc", be, (d_tc,))
            _expect(p, "b_dec", bd, (d,))
            t = sd.get("activation_function.threshold")
            if t is not None:
                _expect(p, "activation_function.threshold", t, (d_tc,))
            s = sd.get("W_skip")
            if s is not None:
                _expect(p, "W_skip", s, (d, d))
            if i > 0 and (t is None) != (thr[0] is None):
                raise _bad(p, "activation_function.threshold", "is present in some layers and not others")
            if i > 0 and (s is None) != (skip[0] is None):
                raise _bad(p, "W_skip", "is present in some layers and not others")
            W_enc.append(we), b_enc.append(be), W_dec.append(wd), b_dec.append(bd), thr.append(t), skip.append(s)
            sources[f"W_enc.{i}"] = str(p)
    else:
        n = len(list(root.glob("W_enc_*.safetensors")))
        if n == 0:
            raise InvalidRequest(f"{root} has no W_enc_*.safetensors files", field="transcoders")
        for i in range(n):
            pe, pd = root / f"W_enc_{i}.safetensors", root / f"W_dec_{i}.safetensors"
            se, sdd = _read(pe), _read(pd)
            files += [pe, pd]
            we = _get(se, pe, f"W_enc_{i}")
            if we.ndim != 2:
                raise _bad(pe, f"W_enc_{i}", f"has shape {tuple(we.shape)}, expected (d_transcoder, d_model)")
            d_tc, d = we.shape
            if i > 0 and (d_tc, d) != tuple(W_enc[0].shape):
                raise _bad(pe, f"W_enc_{i}", f"has shape {(d_tc, d)} but W_enc_0 has {tuple(W_enc[0].shape)}")
            be, bd, wd = _get(se, pe, f"b_enc_{i}"), _get(se, pe, f"b_dec_{i}"), _get(sdd, pd, f"W_dec_{i}")
            _expect(pe, f"b_enc_{i}", be, (d_tc,))
            _expect(pe, f"b_dec_{i}", bd, (d,))
            _expect(pd, f"W_dec_{i}", wd, (d_tc, n - i, d))
            t = se.get(f"threshold_{i}")
            if t is not None:
                t = t.reshape(-1)
                _expect(pe, f"threshold_{i}", t, (d_tc,))
            if i > 0 and (t is None) != (thr[0] is None):
                raise _bad(pe, f"threshold_{i}", "is present in some layers and not others")
            W_enc.append(we), b_enc.append(be), W_dec.append(wd), b_dec.append(bd), thr.append(t), skip.append(None)
            sources[f"W_enc.{i}"] = str(pe)

    has_thr = thr[0] is not None
    activation = act_cfg or ("jumprelu" if has_thr else "relu")
    if activation == "jumprelu" and not has_thr:
        raise InvalidRequest(f"{cfg_path}: activation_function jumprelu needs threshold tensors", field="transcoders")
    tcs = TranscoderSet(
        kind="plt" if kind == "transcoder_set" else "clt",
        W_enc=W_enc,
        b_enc=b_enc,
        W_dec=W_dec,
        b_dec=b_dec,
        activation=activation,
        feature_input_hook=in_hook,
        feature_output_hook=out_hook,
        threshold=thr if has_thr else None,
        top_k=int(top_k) if activation == "topk" else None,
        W_skip=skip if skip[0] is not None else None,
        scan=cfg.get("scan"),
        path=str(root),
        identity=file_identity(files + [cfg_path]),
        sources=sources,
    )
    return tcs.to(dtype=dtype, device=device)
