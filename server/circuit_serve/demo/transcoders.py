"""Per-layer transcoders for the demo model: TopK training (optionally BatchTopK -> JumpReLU), on-disk format.

For each layer l (independently):
1. Standardise the MLP input x (per coordinate) and output y (one scalar scale) on the training
   positions. Weight each position by ~1/|y|^2 so that the few positions with huge MLP outputs do
   not drown the rest, and oversample answer positions (the next token is a fact's attribute).
2. Initialise every feature from one training position (encoder along its input, decoder along its
   output), then train TopK: `pre = relu(x W_enc^T + b_enc)`, keep the k largest per position,
   `y_hat = a W_dec + b_dec` (decoded sparsely); loss = weighted MSE plus an AuxK term through which
   dead features learn to model the residual. Decoder rows are kept at unit norm.
3. Activation shipped: `topk` (the default; the engine's format extension `activation_function:
   topk`, `top_k: k`) or `jumprelu`: the last part of training switches to BatchTopK (k * B
   largest of the batch) and one threshold, the value BatchTopK keeps on a batch of training
   positions, becomes `activation_function.threshold`.
4. Fold the standardisation into the weights and write `layer_{l}.safetensors`
   (`W_enc [d_tc, d]`, `W_dec [d_tc, d]`, `b_enc [d_tc]`, `b_dec [d]`, optional
   `activation_function.threshold [d_tc]`) and one `config.yaml` (`model_kind: transcoder_set`).

Why TopK: with BatchTopK the few positions with huge pre-activations took the batch's budget; most
features died and the answer positions, where the facts are looked up, were reconstructed worst.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from circuit_serve.demo.activations import INPUT_HOOK, OUTPUT_HOOK, MlpData

log = logging.getLogger(__name__)


@dataclass
class TranscoderSettings:
    d_transcoder: int = 1024
    k: int = 4  # small k: one feature tends to carry a whole fact at the answer position
    steps: int = 2000
    batch: int = 512
    lr: float = 3e-3
    answer_oversample: int = 16  # answer positions appear this many times per epoch
    aux_k: int = 64
    aux_coef: float = 1 / 32
    dead_after: int = 200  # steps without firing before a feature counts as dead
    threshold_positions: int = 8192  # positions that set the JumpReLU threshold
    weight_floor: float = 0.1  # position weight 1 / (mean square output + floor), standardised units
    activation: str = "topk"  # "topk" (shipped as TopK) | "jumprelu" (TopK then BatchTopK, converted)
    topk_share: float = 0.6  # jumprelu only: share of steps trained as TopK before BatchTopK


@dataclass
class Transcoder:
    """One layer's transcoder in the on-disk parametrisation: JumpReLU (`threshold`) or TopK (`top_k`)."""

    W_enc: torch.Tensor  # (d_tc, d)
    b_enc: torch.Tensor  # (d_tc,)
    W_dec: torch.Tensor  # (d_tc, d)
    b_dec: torch.Tensor  # (d,)
    threshold: torch.Tensor | None = None  # (d_tc,)
    top_k: int | None = None

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations `(..., d_tc)` of MLP inputs `(..., d)`."""
        pre = x @ self.W_enc.T + self.b_enc
        if self.top_k is not None:
            vals, idx = pre.topk(self.top_k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))
        return pre * (pre > self.threshold)

    def decode(self, a: torch.Tensor) -> torch.Tensor:
        return a @ self.W_dec + self.b_dec

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec, "b_dec": self.b_dec}
        if self.threshold is not None:
            out["activation_function.threshold"] = self.threshold
        return out


def _forward(xb: torch.Tensor, W_enc, b_enc, W_dec, b_dec, k: int, per_row: bool = True):
    """TopK (`per_row`) or BatchTopK forward on a batch `(B, d)`.

    Returns (raw pre-activations `(B, F)`, kept values, kept features, y_hat `(B, d)`).
    """
    raw = xb @ W_enc.T + b_enc  # (B, F)
    if per_row:
        vals, cols = torch.relu(raw).topk(k, dim=1)  # (B, k) each
        return raw, vals.flatten(), cols.flatten(), b_dec + (vals[..., None] * W_dec[cols]).sum(1)
    vals, flat = torch.relu(raw).flatten().topk(k * len(xb), sorted=False)  # (kB,)
    rows, cols = flat // W_enc.shape[0], flat % W_enc.shape[0]
    y_hat = b_dec + torch.zeros(len(xb), W_dec.shape[1]).index_add(0, rows, vals[:, None] * W_dec[cols])
    return raw, vals, cols, y_hat


def _train_layer(
    x: torch.Tensor, y: torch.Tensor, answer: torch.Tensor, s: TranscoderSettings, seed: int
) -> Transcoder:
    """Steps 1-4 for one layer; x, y `(N, d)`."""
    g = torch.Generator().manual_seed(seed)
    d, n_feat = x.shape[1], s.d_transcoder
    mu_x, mu_y = x.mean(0), y.mean(0)
    sx = x.std(0) + 1e-6  # (d,) per coordinate: a few huge residual coordinates must not dominate
    sy = (y - mu_y).pow(2).sum(1).mean().sqrt() / d**0.5
    xn, yn = (x - mu_x) / sx, (y - mu_y) / sy  # (N, d)
    # per-position weight ~ 1 / |y|^2: a few positions with huge MLP outputs must not drown the rest
    weight = 1.0 / (yn.pow(2).mean(1) + s.weight_floor)  # (N,)

    pool = torch.cat([torch.arange(len(x))] + [torch.nonzero(answer).flatten()] * (s.answer_oversample - 1))
    # data init: each feature starts as one training position (input direction -> output direction)
    seeds = pool[torch.randperm(len(pool), generator=g)[:n_feat]]
    x0, y0 = xn[seeds], yn[seeds]
    # scaled so that k features like the seed together rebuild the seed's output
    W_enc = (x0 / x0.pow(2).sum(1, keepdim=True) * y0.norm(dim=1, keepdim=True) / s.k).requires_grad_()
    W_dec = (y0 / y0.norm(dim=1, keepdim=True)).requires_grad_()
    b_enc = torch.zeros(n_feat, requires_grad=True)
    b_dec = torch.zeros(d, requires_grad=True)
    params = (W_enc, b_enc, W_dec, b_dec)
    opt = torch.optim.Adam(params, lr=s.lr, betas=(0.9, 0.999))

    order = pool[torch.randperm(len(pool), generator=g)]
    last_fired = torch.zeros(n_feat, dtype=torch.long)
    cursor = 0
    for step in range(1, s.steps + 1):
        if cursor + s.batch > len(order):
            order, cursor = pool[torch.randperm(len(pool), generator=g)], 0
        idx = order[cursor : cursor + s.batch]
        cursor += s.batch
        xb, yb = xn[idx], yn[idx]  # (B, d)
        per_row = s.activation == "topk" or step <= s.topk_share * s.steps
        raw, vals, cols, y_hat = _forward(xb, *params, s.k, per_row=per_row)
        err = yb - y_hat
        wb = weight[idx] / weight[idx].mean()  # (B,)
        loss = (wb * err.pow(2).sum(1)).mean()
        last_fired[cols[vals > 0]] = step
        dead = (step - last_fired) > s.dead_after
        if dead.any():  # AuxK: dead features' top pre-activations model the residual error
            ka = min(s.aux_k, int(dead.sum()))
            av, ai = raw[:, dead].topk(ka, dim=1)  # (B, ka), not rectified so they get a gradient
            aux = (av[..., None] * W_dec[dead][ai]).sum(1)  # (B, d)
            loss = loss + s.aux_coef * (wb * (err.detach() - aux).pow(2).sum(1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            W_dec.div_(W_dec.norm(dim=1, keepdim=True))
        if step % 500 == 0:
            log.info("  step %d loss %.4f dead %d", step, loss.item(), int(dead.sum()))

    with torch.no_grad():
        sample = xn[pool[torch.randperm(len(pool), generator=g)[: s.threshold_positions]]]  # training mix
        pre = torch.relu(sample @ W_enc.T + b_enc)  # (n, F)
        theta = pre.flatten().topk(s.k * len(sample)).values.min()  # what BatchTopK keeps on this batch
        # fold the standardisation: pre = ((x - mu_x)/sx) W^T + b ; y = sy * (a W_dec + b_dec) + mu_y
        W_enc_f = W_enc / sx  # sx broadcasts over input coordinates
        b_enc_f = b_enc - (mu_x / sx) @ W_enc.T
        return Transcoder(
            W_enc=W_enc_f.contiguous(),
            b_enc=b_enc_f.contiguous(),
            W_dec=(W_dec * sy).contiguous(),
            b_dec=(b_dec * sy + mu_y).contiguous(),
            threshold=None if s.activation == "topk" else torch.full((n_feat,), theta.item()),
            top_k=s.k if s.activation == "topk" else None,
        )


def train_transcoders(data: MlpData, settings: TranscoderSettings, seed: int) -> list[Transcoder]:
    out = []
    for li in range(len(data.x)):
        t0 = time.perf_counter()
        out.append(_train_layer(data.x[li], data.y[li], data.answer, settings, seed + li))
        log.info("transcoder layer %d trained in %.1fs", li, time.perf_counter() - t0)
    return out


@torch.no_grad()
def fvu_and_l0(tc: Transcoder, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Fraction of variance unexplained and mean number of active features, on `(N, d)` data."""
    a = tc.encode(x)
    err = (y - tc.decode(a)).pow(2).sum()
    var = (y - y.mean(0)).pow(2).sum()
    return (err / var).item(), (a > 0).float().sum(1).mean().item()


def save_transcoders(transcoders: list[Transcoder], out_dir: str | Path, scan: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for li, tc in enumerate(transcoders):
        save_file({k: v.float().contiguous() for k, v in tc.tensors().items()}, str(out / f"layer_{li}.safetensors"))
    cfg = {
        "model_kind": "transcoder_set",
        "feature_input_hook": INPUT_HOOK,
        "feature_output_hook": OUTPUT_HOOK,
        "scan": scan,
    }
    if transcoders[0].top_k is not None:  # the engine's extension of the format
        cfg |= {"activation_function": "topk", "top_k": transcoders[0].top_k}
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=True))


def load_transcoders(path: str | Path) -> list[Transcoder]:
    """Read a directory written by `save_transcoders` (the demo's own evaluation uses it)."""
    path = Path(path)
    cfg = yaml.safe_load((path / "config.yaml").read_text())
    top_k = cfg.get("top_k") if cfg.get("activation_function") == "topk" else None
    out = []
    for li in range(len(list(path.glob("layer_*.safetensors")))):
        t = load_file(str(path / f"layer_{li}.safetensors"))
        threshold = t.get("activation_function.threshold")
        out.append(Transcoder(t["W_enc"], t["b_enc"], t["W_dec"], t["b_dec"], threshold, top_k))
    return out
