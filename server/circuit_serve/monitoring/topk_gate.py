"""TopK taps without the full encoder row for most tokens: an exact gate through sentinel features.

A TopK feature `f` is active at a token iff `pre_f > 0` and `pre_f >= kth(pre)`, the k-th largest
pre-activation of the layer's whole encoder row (`d_tc` features). The whole row is the taps' main
cost on a small model (a `(T, d) @ (d, d_tc)` product and a top-k over `d_tc` per layer). For any
subset `S` of the layer's features the k-th largest over `S` is a lower bound of the row's:

    kth_S = kth(pre[S]) <= kth(pre)            (|S| >= k)

so a watched feature with `pre_f < kth_S` (or `pre_f <= 0`) is inactive, whatever the rest of the
row holds. Per layer and step:

1. sub    = x @ W[S + watched].T + b           (T, s + C)       # s sentinels, C watched columns
2. kth_S  = kth(sub[:, :s])                    (T, 1)
3. maybe  = any(sub[:, s:] >= kth_S - tol and sub[:, s:] > -tol)   (T,)   # over the columns in use;
                                                                         # tol: rounding of 1. vs 4.
4. for the `maybe` tokens only: the full row, its k-th largest, and the watched columns' activity
   exactly as the ungated taps compute them; every other token: inactive, `pre` from 1.

Only step 4's tokens pay for the whole row. A step of fewer than `MIN_TOKENS` tokens (decoding)
takes the whole row directly: at that size the gate's dozen small operations cost more than the
product they save (measured on the demo set: break-even near 40 tokens). `S` is the `s` features most often in the top k over
the layer's first `warmup` tapped tokens (computed whole, as before the gate); any `S` gives the
same values, a good one only makes step 4 rarer. On the trained demo set (k = 4 of 1,024) with the
benchmark's watchlist, 64 sentinels left 1-7% of tokens for step 4.

Used where the taps run on the CPU only: the token subset of step 4 has a data-dependent size,
which a GPU would pay for with a synchronisation per layer (and CUDA graphs cannot replay);
there the full row is one cheap product.
"""

from __future__ import annotations

import torch

SENTINELS = 64  # features per layer in S
WARMUP_TOKENS = 1024  # tokens per layer computed whole before S is chosen
MIN_TOKENS = 40  # fewer tokens in a step (decode): the whole row, cheaper than the gate's ~15 small ops
_TOL = 1e-5  # relative: the gate's products and the full row's may round differently


class TopKGate:
    def __init__(self, n_layers: int, d_tc: int, k: int, *, sentinels: int = SENTINELS, warmup: int = WARMUP_TOKENS):
        self.k, self.warmup = k, warmup
        self.s = max(k, min(sentinels, d_tc // 4))
        self.counts = [torch.zeros(d_tc, dtype=torch.long) for _ in range(n_layers)]  # top-k hits in warm-up
        self.seen = [0] * n_layers
        self.sentinels: list[torch.Tensor | None] = [None] * n_layers  # (s,) long, once warmed up
        self._sub: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # layer -> (W_sub.T (d, s + C), b_sub)
        self.tokens = self.whole = 0  # tokens tapped after warm-up, and those that took the whole row

    def forget_columns(self, layer: int) -> None:
        """A watched column of `layer` changed feature: rebuild its gathered rows on next use."""
        self._sub.pop(layer, None)

    def tap(
        self,
        layer: int,
        x: torch.Tensor,
        w_t: torch.Tensor,
        b_full: torch.Tensor,
        index: torch.Tensor,
        in_use: torch.Tensor,
        pre: torch.Tensor,
        active: torch.Tensor,
    ) -> None:
        """Fill `pre (T, C)` and `active (T, C)` for the watched features `index (C,)` of `layer` from
        its (normalized) input `x (T, d)`; `w_t (d, d_tc)` (transposed), `b_full (d_tc,)`: the layer's
        encoder; `in_use (C,)`: the columns someone watches (a request slot never lent holds feature 0 and
        decides nothing)."""
        if not self.ready(layer, x.shape[0]):
            self._whole(layer, x, w_t, b_full, index, pre, active, learn=self.sentinels[layer] is None)
            return
        sub = self._sub.get(layer)
        if sub is None:
            sub = self._sub[layer] = self.gather(layer, w_t, b_full, index)
        both, kth_s, tol = self.bound(layer, x, sub)
        pre.copy_(both)
        # 3. tokens where a watched feature may be in the row's top k
        maybe = (may_pass(pre, kth_s, tol) & in_use).any(dim=1).nonzero().squeeze(1)  # (m,)
        active.zero_()
        self.tokens += x.shape[0]
        self.whole += maybe.numel()
        if maybe.numel():  # 4. the whole row for those tokens only
            p, a = pre[maybe], active[maybe]
            self._whole(layer, x[maybe], w_t, b_full, index, p, a, learn=False)
            pre[maybe], active[maybe] = p, a

    def ready(self, layer: int, n_tokens: int) -> bool:
        """Whether a step of `n_tokens` at `layer` goes through the gate (its sentinels are known
        and the step is long enough); else the whole row."""
        return self.sentinels[layer] is not None and n_tokens >= MIN_TOKENS

    def gather(
        self, layer: int, w_t: torch.Tensor, b_full: torch.Tensor, index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 1's operands for features `index (C,)` from the layer's transposed encoder `w_t (d, d_tc)`:
        the sentinels' and their encoder columns `(d, s + C)`, and biases `(s + C,)` (the caller keeps
        them while `index` holds)."""
        cols = torch.cat([self.sentinels[layer], index])
        return w_t.index_select(1, cols).contiguous(), b_full.index_select(0, cols)

    def bound(
        self, layer: int, x: torch.Tensor, sub: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Steps 1.-2. on `x (T, d)` with `sub` from `gather`: the features' pre-activations `(T, C)`,
        the sentinels' k-th largest `kth_s (T, 1)` and its rounding tolerance `tol (T, 1)`."""
        s = self.sentinels[layer].numel()
        both = torch.addmm(sub[1], x, sub[0])  # (T, s + C)
        kth_s = both[:, :s].topk(self.k, dim=-1).values[:, -1:]  # (T, 1)
        return both[:, s:], kth_s, _TOL * (kth_s.abs() + 1.0)

    def _whole(self, layer, x, w_t, b_full, index, pre, active, *, learn: bool) -> None:
        full = torch.addmm(b_full, x, w_t)  # (T, d_tc)
        top = full.topk(self.k, dim=-1)
        watched_of_rows(full, top.values[:, -1:], index, pre, active)
        if learn:
            self.learn(layer, top.indices)

    def learn(self, layer: int, top: torch.Tensor) -> None:
        """Count the warm-up's top-k features; once `warmup` tokens are seen, keep the `s` most frequent."""
        counts = self.counts[layer]
        counts += torch.bincount(top.flatten().cpu(), minlength=counts.numel())
        self.seen[layer] += top.shape[0]
        if self.seen[layer] >= self.warmup:
            self.sentinels[layer] = counts.topk(self.s).indices.sort().values.to(top.device)


def watched_of_rows(
    full: torch.Tensor, kth: torch.Tensor, index: torch.Tensor, pre: torch.Tensor, active: torch.Tensor
) -> None:
    """From whole rows `full (T, d_tc)` and their k-th largest values `kth (T, 1)`: the watched
    features `index (C,)` into `pre (T, C)`, and into `active (T, C)` whether each is among its row's
    top k and positive, i.e. `pre >= max(kth, the smallest positive float)` (`kth` is clamped in place)."""
    torch.index_select(full, 1, index, out=pre)
    torch.ge(pre, kth.clamp_(min=torch.finfo(torch.float32).tiny), out=active)


def may_pass(pre: torch.Tensor, kth_s: torch.Tensor, tol: torch.Tensor) -> torch.Tensor:
    """Step 3, elementwise (broadcast): a pre-activation that may be in its row's top k and positive.
    False is exact: the feature is inactive; True needs the whole row."""
    return (pre >= kth_s - tol) & (pre > -tol)
