"""Logit targets of an attribution graph: which output directions the rows start from.

1. Default: the most probable next tokens at the last position, in probability order, until
   their cumulative probability reaches `desired_logit_prob` (at most `max_n_logits`).
2. Explicit token ids: those tokens, with their probabilities as weights.
3. A contrast `(a, b)` ("token a minus token b"): direction `u_a - u_b`, weight `p_a`.

A token's direction is its unembedding row minus the mean row over the vocabulary (the
demeaned logit); probabilities come from the model's own (soft-capped) logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from circuit_serve.domain.errors import InvalidRequest


@dataclass(frozen=True)
class Contrast:
    """Target "logit(token) - logit(versus)"."""

    token: int
    versus: int


TargetSpec = int | Contrast | tuple[int, int]


@dataclass
class LogitTargets:
    token_ids: list[int]  # the (promoted) token of each target
    contrast_ids: list[int | None]  # the subtracted token of a contrast target, else None
    labels: list[str]  # decoded token, or "a - b"
    probabilities: torch.Tensor  # (k,) float32 weights (softmax probabilities)
    vectors: torch.Tensor  # (k, d) float32 directions read after the final norm

    def __len__(self) -> int:
        return len(self.token_ids)


def select_targets(
    logits: torch.Tensor,
    unembed: torch.Tensor,
    decode,
    *,
    targets: Sequence[TargetSpec] | None,
    max_n_logits: int,
    desired_logit_prob: float,
) -> LogitTargets:
    """logits (V,) last position; unembed (V, d) lm_head weight; decode(id) -> str."""
    probs = torch.softmax(logits.float(), -1)  # (V,)
    V = probs.shape[0]
    mean_row = unembed.float().mean(0)  # (d,)

    def direction(t: int) -> torch.Tensor:
        return unembed[t].float() - mean_row

    if targets is None:
        top_p, top_i = torch.topk(probs, min(max_n_logits, V))
        cut = int(torch.searchsorted(torch.cumsum(top_p, 0), torch.tensor(desired_logit_prob, device=top_p.device))) + 1
        ids = top_i[:cut].tolist()
        return LogitTargets(
            token_ids=ids,
            contrast_ids=[None] * len(ids),
            labels=[decode(t) for t in ids],
            probabilities=probs[ids].float().cpu(),
            vectors=torch.stack([direction(t) for t in ids]),
        )
    if len(targets) == 0:
        raise InvalidRequest("give at least one target token, or none to use the most probable tokens", field="targets")
    ids, cids, labels, p, vecs = [], [], [], [], []
    for spec in targets:
        if isinstance(spec, tuple):
            spec = Contrast(*spec)
        toks = [spec.token, spec.versus] if isinstance(spec, Contrast) else [spec]
        for t in toks:
            if not isinstance(t, int) or not 0 <= t < V:
                raise InvalidRequest(f"target token id {t!r} is outside the vocabulary [0, {V})", field="targets")
        if isinstance(spec, Contrast):
            ids.append(spec.token)
            cids.append(spec.versus)
            labels.append(f"{decode(spec.token)} - {decode(spec.versus)}")
            p.append(float(probs[spec.token]))
            vecs.append(unembed[spec.token].float() - unembed[spec.versus].float())
        else:
            ids.append(spec)
            cids.append(None)
            labels.append(decode(spec))
            p.append(float(probs[spec]))
            vecs.append(direction(spec))
    return LogitTargets(ids, cids, labels, torch.tensor(p, dtype=torch.float32), torch.stack(vecs))
