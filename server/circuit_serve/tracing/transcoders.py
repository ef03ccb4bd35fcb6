"""Transcoder sets in the published on-disk formats: per-layer (PLT) and cross-layer (CLT).

A set is named by a local directory or a Hugging Face repo id (`org/name[/subfolder][@revision]`,
resolved through huggingface_hub, see hub.py). Its `config.yaml` says what it is:

1. `model_kind` (`transcoder_set` = PLT, `cross_layer_transcoder` = CLT), `feature_input_hook`
   (`hook_resid_mid`, `ln2.hook_normalized`, `mlp.hook_in`), `feature_output_hook`
   (`hook_mlp_out`, `mlp.hook_out`), `scan` (an identifier; default: the set's name).
2. The activation: JumpReLU when threshold tensors are present, else ReLU; TopK with
   circuit-tracer's keys `activation: topk` and `k: K` (this project's older keys
   `activation_function: topk`, `top_k: K` still work). TopK keeps the K largest
   pre-activations and then applies ReLU.
3. PLT files: the `transcoders:` list (one entry per layer, `hf://org/repo/path[?revision=REV]`, a
   path relative to the config's folder, or an absolute path; `.safetensors` in circuit-tracer's
   layout or GemmaScope's `params.npz`), else `layer_{i}.safetensors` next to the config.
4. CLT files: `W_enc_{i}.safetensors` + `W_dec_{i}.safetensors` next to the config.
The per-file layouts and the lazy decoder are in transcoder_files.py.

Features: `pre = x @ W_enc.T + b_enc`, `a = act(pre)`; layer l's reconstruction is
`sum_s a_s W_dec[s -> l] + b_dec[l] (+ x_l @ W_skip[l].T)`. Every shape or key problem is reported
as `InvalidRequest` naming the file and the tensor.

Held in memory (serving dtype, on the device): encoders `W_enc` (L x F x d), biases,
thresholds, skips (L x d x d). Decoders: with `lazy=True` (the default) only the rows of a graph's
active features, read from the safetensors file when the graph needs them; eager (or `.npz`
files, which cannot be sliced in place) the whole L x F x d (CLT: F x (L - l) x d per layer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from circuit_serve.domain.errors import InvalidRequest
from circuit_serve.memory_plan import TranscoderShape
from circuit_serve.tracing.hub import HubRef, hub_file, hub_folder, parse_hf_uri, parse_repo_spec, snapshot_commit
from circuit_serve.tracing.identity import file_identity
from circuit_serve.tracing.transcoder_files import (
    LayerTensors,
    LazyRows,
    bad,
    read_clt_layer,
    read_plt_npz,
    read_plt_safetensors,
)

INPUT_HOOKS = ("hook_resid_mid", "ln2.hook_normalized", "mlp.hook_in")
OUTPUT_HOOKS = ("hook_mlp_out", "mlp.hook_out")
ACTIVATIONS = ("relu", "jumprelu", "topk")


@dataclass
class TranscoderSet:
    """All layers' transcoders, held as plain tensors (no nn.Module, no gradients)."""

    kind: str  # "plt" | "clt"
    W_enc: list[torch.Tensor]  # per layer (d_tc, d)
    b_enc: list[torch.Tensor]  # per layer (d_tc,)
    W_dec: list[torch.Tensor | LazyRows]  # PLT: (d_tc, d); CLT: (d_tc, L - l, d)
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
    name: str | None = None  # the directory or repo id it was loaded from
    revision: str | None = None  # the hub commit of a set loaded by repo id

    @property
    def lazy(self) -> bool:
        return isinstance(self.W_dec[0], LazyRows)

    def resident_bytes(self) -> int:
        """Bytes of the tensors this set holds (lazy decoders hold none)."""
        held = [*self.W_enc, *self.b_enc, *self.W_dec, *self.b_dec, *(self.threshold or []), *(self.W_skip or [])]
        return sum(t.numel() * t.element_size() for t in held if isinstance(t, torch.Tensor))

    def describe(self) -> dict:
        """What is loaded, for ModelInfo and logs (plain values)."""
        return {
            "name": self.name or self.path or "",
            "path": self.path or "",
            "revision": self.revision or "",
            "kind": self.kind,
            "n_layers": self.n_layers,
            "d_transcoder": self.d_transcoder,
            "d_model": self.d_model,
            "feature_input_hook": self.feature_input_hook,
            "feature_output_hook": self.feature_output_hook,
            "activation": self.activation,
            "top_k": self.top_k or 0,
            "skip": self.has_skip,
            "dtype": str(self.dtype).removeprefix("torch."),
            "lazy_decoder": self.lazy,
            "scan": self.scan or "",
        }

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


# -- loading ------------------------------------------------------------------------------


@dataclass
class _Located:
    root: Path  # the folder holding config.yaml (a hub snapshot folder for a repo id)
    config: Path
    name: str
    repo: HubRef | None


def _locate(spec: str | Path) -> _Located:
    root = Path(spec)
    if root.is_dir():
        cfg = root / "config.yaml"
        if not cfg.is_file():
            raise InvalidRequest(f"{cfg} not found: a transcoder directory needs config.yaml", field="transcoders")
        return _Located(root, cfg, str(spec), None)
    ref = parse_repo_spec(str(spec))
    if ref is None:
        raise InvalidRequest(
            f"{spec} is neither a transcoder directory nor a Hugging Face repo id (org/name[/subfolder][@revision])",
            field="transcoders",
        )
    cfg = hub_file(ref, "config.yaml")
    return _Located(cfg.parent, cfg, str(ref), ref)


def _layer_files(loc: _Located, cfg: dict) -> list[Path]:
    """PLT: one file per layer, from the `transcoders:` list or `layer_{i}.safetensors`."""
    entries = cfg.get("transcoders")
    if entries is not None:
        if not isinstance(entries, list) or not entries or not all(isinstance(e, str) for e in entries):
            raise InvalidRequest(f"{loc.config}: transcoders must be a list of file references", field="transcoders")
        files = []
        for e in entries:
            if e.startswith("hf://"):
                files.append(hub_file(parse_hf_uri(e)))
            elif Path(e).is_absolute():
                files.append(Path(e))
            elif loc.repo is not None:  # a file of the same repository, relative to the config
                sub = "/".join(p for p in (loc.repo.path, e) if p)
                files.append(hub_file(HubRef(loc.repo.repo_id, sub, loc.repo.revision)))
            else:
                files.append(loc.root / e)
        return files
    root = loc.root if loc.repo is None else hub_folder(loc.repo, ["layer_*.safetensors"])
    n = len(list(root.glob("layer_*.safetensors")))
    if n == 0:
        raise InvalidRequest(
            f"{root} has no layer_*.safetensors files and {loc.config} lists no transcoders", field="transcoders"
        )
    return [root / f"layer_{i}.safetensors" for i in range(n)]


def _activation(cfg: dict, cfg_path: Path) -> tuple[str, int | None]:
    """(activation named by the config or "" to infer from the tensors, k for TopK)."""
    raw = cfg.get("activation", cfg.get("activation_function", ""))
    act = str(raw or "").lower().replace("_", "")
    top_k = cfg.get("k", cfg.get("top_k"))
    if act and act not in ACTIVATIONS:
        raise InvalidRequest(f"{cfg_path}: activation {raw!r} is not one of {ACTIVATIONS}", field="transcoders")
    if act == "topk" and not (isinstance(top_k, int) and not isinstance(top_k, bool) and top_k > 0):
        raise InvalidRequest(f"{cfg_path}: activation topk needs a positive integer k", field="transcoders")
    return act, (int(top_k) if act == "topk" else None)


def load_transcoders(
    path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    lazy: bool = True,
    identity_cache: Path | None = None,
) -> TranscoderSet:
    """Load a PLT or CLT set (a directory or repo id, see the module docstring) in `dtype` on `device`.

    lazy: decoders are read from their safetensors files when a graph needs their rows.
    identity_cache: a folder where the weight files' sha256 is kept between starts (identity.py).
    """
    import yaml

    loc = _locate(path)
    cfg = yaml.safe_load(loc.config.read_text()) or {}
    if not isinstance(cfg, dict):
        raise InvalidRequest(f"{loc.config}: expected a mapping of settings", field="transcoders")
    kind = cfg.get("model_kind")
    in_hook, out_hook = cfg.get("feature_input_hook"), cfg.get("feature_output_hook")
    if kind not in ("transcoder_set", "cross_layer_transcoder"):
        raise InvalidRequest(
            f"{loc.config}: model_kind {kind!r} is not supported; use transcoder_set or cross_layer_transcoder",
            field="transcoders",
        )
    if in_hook not in INPUT_HOOKS:
        raise InvalidRequest(
            f"{loc.config}: feature_input_hook {in_hook!r} is not one of {INPUT_HOOKS}", field="transcoders"
        )
    if out_hook not in OUTPUT_HOOKS:
        raise InvalidRequest(
            f"{loc.config}: feature_output_hook {out_hook!r} is not one of {OUTPUT_HOOKS}", field="transcoders"
        )
    act_cfg, top_k = _activation(cfg, loc.config)

    # 1. read every layer (shapes checked per file)
    layers: list[LayerTensors] = []
    if kind == "transcoder_set":
        for p in _layer_files(loc, cfg):
            if p.suffix == ".npz":
                layers.append(read_plt_npz(p, dtype=dtype, device=device))
            else:
                layers.append(read_plt_safetensors(p, dtype=dtype, device=device, lazy=lazy))
    else:
        root = loc.root if loc.repo is None else hub_folder(loc.repo, ["W_enc_*.safetensors", "W_dec_*.safetensors"])
        n = len(list(root.glob("W_enc_*.safetensors")))
        if n == 0:
            raise InvalidRequest(f"{root} has no W_enc_*.safetensors files", field="transcoders")
        layers = [read_clt_layer(root, i, n, dtype=dtype, device=device, lazy=lazy) for i in range(n)]

    # 2. the layers must agree with each other
    first = layers[0]
    enc = "W_enc_{i}" if kind == "cross_layer_transcoder" else "W_enc"
    for i, lt in enumerate(layers[1:], start=1):
        if lt.W_enc.shape != first.W_enc.shape:
            raise bad(
                lt.enc_file,
                enc.format(i=i),
                f"has shape {tuple(lt.W_enc.shape)} but layer 0 has {tuple(first.W_enc.shape)}",
            )
        if (lt.threshold is None) != (first.threshold is None):
            raise bad(lt.enc_file, "threshold", "is present in some layers and not others")
        if (lt.W_skip is None) != (first.W_skip is None):
            raise bad(lt.enc_file, "W_skip", "is present in some layers and not others")

    has_thr = first.threshold is not None
    activation = act_cfg or ("jumprelu" if has_thr else "relu")
    if activation == "jumprelu" and not has_thr:
        raise InvalidRequest(f"{loc.config}: activation jumprelu needs threshold tensors", field="transcoders")
    files = [f for lt in layers for f in lt.files]
    revision = snapshot_commit(loc.config) if loc.repo is not None else None
    return TranscoderSet(
        kind="plt" if kind == "transcoder_set" else "clt",
        W_enc=[lt.W_enc for lt in layers],
        b_enc=[lt.b_enc for lt in layers],
        W_dec=[lt.W_dec for lt in layers],
        b_dec=[lt.b_dec for lt in layers],
        activation=activation,
        feature_input_hook=in_hook,
        feature_output_hook=out_hook,
        threshold=[lt.threshold for lt in layers] if has_thr else None,
        top_k=top_k,
        W_skip=[lt.W_skip for lt in layers] if first.W_skip is not None else None,
        scan=cfg.get("scan") or loc.name,
        path=str(loc.root),
        identity=file_identity(files + [loc.config], identity_cache),
        sources={f"W_enc.{i}": str(lt.enc_file) for i, lt in enumerate(layers)},
        name=loc.name,
        revision=revision,
    )


def transcoder_shape(path: str | Path, *, lazy: bool = True) -> TranscoderShape:
    """The set's shapes (memory_plan.TranscoderShape) from its config and file headers; no weights read."""
    import numpy as np
    import yaml
    from safetensors import safe_open

    loc = _locate(path)
    cfg = yaml.safe_load(loc.config.read_text()) or {}
    if cfg.get("model_kind") == "cross_layer_transcoder":
        root = loc.root if loc.repo is None else hub_folder(loc.repo, ["W_enc_*.safetensors", "W_dec_*.safetensors"])
        n = len(list(root.glob("W_enc_*.safetensors")))
        if n == 0:
            raise InvalidRequest(f"{root} has no W_enc_*.safetensors files", field="transcoders")
        with safe_open(str(root / "W_enc_0.safetensors"), framework="pt") as f:
            F, d = f.get_slice("W_enc_0").get_shape()
            keys = set(f.keys())
        return TranscoderShape(
            "clt", n, F, d, skip="W_skip_0" in keys, threshold="threshold_0" in keys, lazy_decoder=lazy
        )
    files = _layer_files(loc, cfg)
    if files[0].suffix == ".npz":
        with np.load(files[0]) as z:
            F, d = len(z["b_enc"]), len(z["b_dec"])
        return TranscoderShape("plt", len(files), F, d, skip=False, threshold=True, lazy_decoder=False)
    with safe_open(str(files[0]), framework="pt") as f:
        F, d = f.get_slice("W_enc").get_shape()
        keys = set(f.keys())
    return TranscoderShape(
        "plt",
        len(files),
        F,
        d,
        skip="W_skip" in keys,
        threshold="activation_function.threshold" in keys,
        lazy_decoder=lazy,
    )
