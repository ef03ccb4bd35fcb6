"""Per-layer transcoders for the demo model: BatchTopK training, JumpReLU conversion, on-disk format.

For each layer l (independently):
1. Standardise the MLP input x and output y (mean, one scalar scale each) on the training positions.
2. Train a BatchTopK transcoder: `pre = relu(x W_enc^T + b_enc)`; keep the `k * B` largest entries of
   the batch; `y_hat = a W_dec + b_dec` (decoded sparsely); loss = MSE, plus an AuxK term that lets
   dead features reconstruct the residual. Decoder rows are kept at unit norm. Answer positions
   (the next token is a fact's attribute) are oversampled.
3. Convert to JumpReLU: one threshold, the value that keeps on average k features per position on
   the training positions (what BatchTopK keeps on a batch of that size).
4. Fold the standardisation into the weights and write `layer_{l}.safetensors`
   (`W_enc [d_tc, d]`, `W_dec [d_tc, d]`, `b_enc [d_tc]`, `b_dec [d]`,
   `activation_function.threshold [d_tc]`) and one `config.yaml` (`model_kind: transcoder_set`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from circuit_serve.demo.activations import INPUT_HOOK, OUTPUT_HOOK, MlpData

log = logging.getLogger(__name__)


@dataclass
class TranscoderSettings:
    d_transcoder: int = 1024
    k: int = 12
    steps: int = 1500
    batch: int = 512
    lr: float = 2e-3
    answer_oversample: int = 4  # answer positions appear this many times per epoch
    aux_k: int = 64
    aux_coef: float = 1 / 32
    dead_after: int = 200  # steps without firing before a feature counts as dead
    threshold_positions: int = 8192  # positions that set the JumpReLU threshold


@dataclass
class Transcoder:
    """One layer's JumpReLU transcoder in the on-disk parametrisation."""

    W_enc: torch.Tensor  # (d_tc, d)
    b_enc: torch.Tensor  # (d_tc,)
    W_dec: torch.Tensor  # (d_tc, d)
    b_dec: torch.Tensor  # (d,)
    threshold: torch.Tensor  # (d_tc,)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations `(..., d_tc)` of MLP inputs `(..., d)`."""
        pre = x @ self.W_enc.T + self.b_enc
        return pre * (pre > self.threshold)

    def decode(self, a: torch.Tensor) -> torch.Tensor:
        return a @ self.W_dec + self.b_dec

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "W_enc": self.W_enc,
            "b_enc": self.b_enc,
            "W_dec": self.W_dec,
            "b_dec": self.b_dec,
            "activation_function.threshold": self.threshold,
        }


def _train_layer(x: torch.Tensor, y: torch.Tensor, answer: torch.Tensor, s: TranscoderSettings, seed: int) -> Transcoder:
    """Steps 1-4 for one layer; x, y `(N, d)`."""
    g = torch.Generator().manual_seed(seed)
    d, n_feat = x.shape[1], s.d_transcoder
    mu_x, mu_y = x.mean(0), y.mean(0)
    sx = (x - mu_x).pow(2).sum(1).mean().sqrt() / d**0.5
    sy = (y - mu_y).pow(2).sum(1).mean().sqrt() / d**0.5
    xn, yn = (x - mu_x) / sx, (y - mu_y) / sy  # (N, d), unit mean square per coordinate

    W_dec = torch.randn(n_feat, d, generator=g)
    W_dec = (W_dec / W_dec.norm(dim=1, keepdim=True)).requires_grad_()
    W_enc = (0.1 * W_dec.detach()).requires_grad_()  # tied init, small so no feature dominates early
    b_enc = torch.zeros(n_feat, requires_grad=True)
    b_dec = torch.zeros(d, requires_grad=True)
    opt = torch.optim.Adam([W_enc, b_enc, W_dec, b_dec], lr=s.lr, betas=(0.9, 0.999))

    pool = torch.cat([torch.arange(len(x))] + [torch.nonzero(answer).flatten()] * (s.answer_oversample - 1))
    order = pool[torch.randperm(len(pool), generator=g)]
    last_fired = torch.zeros(n_feat, dtype=torch.long)
    cursor = 0
    for step in range(1, s.steps + 1):
        if cursor + s.batch > len(order):
            order, cursor = pool[torch.randperm(len(pool), generator=g)], 0
        idx = order[cursor : cursor + s.batch]
        cursor += s.batch
        xb, yb = xn[idx], yn[idx]  # (B, d)
        pre = torch.relu(xb @ W_enc.T + b_enc)  # (B, F)
        vals, flat = pre.flatten().topk(s.k * s.batch, sorted=False)  # (kB,)
        rows, cols = flat // n_feat, flat % n_feat
        y_hat = b_dec + torch.zeros_like(yb).index_add(0, rows, vals[:, None] * W_dec[cols])  # (B, d)
        err = yb - y_hat
        loss = err.pow(2).sum(1).mean()
        fired = torch.zeros(n_feat, dtype=torch.bool)
        fired[cols[vals > 0]] = True
        last_fired[fired] = step
        dead = (step - last_fired) > s.dead_after
        if dead.any():  # AuxK: dead features' top pre-activations model the residual error
            pre_dead = pre[:, dead]
            ka = min(s.aux_k, int(dead.sum()))
            av, ai = pre_dead.topk(ka, dim=1)  # (B, ka)
            dead_rows = W_dec[dead][ai]  # (B, ka, d)
            aux = (av[..., None] * dead_rows).sum(1)
            loss = loss + s.aux_coef * (err.detach() - aux).pow(2).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            W_dec.div_(W_dec.norm(dim=1, keepdim=True))
        if step % 500 == 0:
            log.info("  step %d loss %.4f dead %d", step, loss.item(), int(dead.sum()))

    with torch.no_grad():
        sample = xn[torch.randperm(len(xn), generator=g)[: s.threshold_positions]]
        pre = torch.relu(sample @ W_enc.T + b_enc)  # (n, F)
        theta = pre.flatten().topk(s.k * len(sample)).values.min()  # JumpReLU threshold
        # fold the standardisation: pre = ((x - mu_x)/sx) W^T + b ; y = sy * (a W_dec + b_dec) + mu_y
        W_enc_f = W_enc / sx
        b_enc_f = b_enc - (mu_x / sx) @ W_enc.T
        return Transcoder(
            W_enc=W_enc_f.contiguous(),
            b_enc=b_enc_f.contiguous(),
            W_dec=(W_dec * sy).contiguous(),
            b_dec=(b_dec * sy + mu_y).contiguous(),
            threshold=torch.full((n_feat,), theta.item()),
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
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=True))


def load_transcoders(path: str | Path) -> list[Transcoder]:
    """Read a directory written by `save_transcoders` (the demo's own evaluation uses it)."""
    path = Path(path)
    n = len(list(path.glob("layer_*.safetensors")))
    out = []
    for li in range(n):
        t = load_file(str(path / f"layer_{li}.safetensors"))
        out.append(Transcoder(t["W_enc"], t["b_enc"], t["W_dec"], t["b_dec"], t["activation_function.threshold"]))
    return out


def settings_dict(settings: TranscoderSettings) -> dict:
    return asdict(settings)
