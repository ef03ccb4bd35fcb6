"""Steering: generation on the replacement model with feature interventions.

An intervention on feature f = (layer l, index i) at input position t replaces its activation
a = act(enc_l(x_t))_i by a' (set: a' = v; scale: a' = a * v; add: a' = a + v) and writes the
difference through the feature's decoder: the MLP output at layer l (and, for a cross-layer
transcoder, at every layer it writes to) gains (a' - a) * W_dec[f]. The rest of the model is the
real one (live attention and norms; later features are recomputed from the steered residual),
so an intervention that sets a feature to its current value changes nothing.

Steps of `steer`:
1. validate: features exist, prompt positions are inside the prompt;
2. generate token by token (KV cache) with the interventions hooked into the model: at the given
   prompt positions and, when asked, at every generated token as it is fed back;
3. when asked, generate again without interventions (same seed) for comparison.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from circuit_serve.domain.errors import Cancelled
from circuit_serve.domain.features import FeatureRef, Intervention, TranscoderShape
from circuit_serve.domain.features import Op as Op  # re-exported: steering callers name it here
from circuit_serve.domain.features import check_interventions as validate  # the one check, also Generate's


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 16
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None


@dataclass(frozen=True)
class Completion:
    token_ids: tuple[int, ...]
    text: str


@dataclass(frozen=True)
class SteerResult:
    prompt_token_ids: tuple[int, ...]
    steered: Completion
    default: Completion | None  # without interventions, when asked


class InterventionTarget(Protocol):
    """What steering needs from the replacement model (an adapter over the engine)."""

    shape: TranscoderShape

    def forward(self, input_ids: torch.Tensor, past: Any) -> tuple[torch.Tensor, Any]:
        """`(1, T)` ids after `past` -> `(1, T, vocab)` logits and the new cache."""
        ...

    def hook_input(self, layer: int, fn: Callable[[torch.Tensor], None]) -> Any:
        """Call `fn(x)` with the transcoder input `(1, T, d)` of `layer`; returns a removable handle."""
        ...

    def hook_output(self, layer: int, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
        """Replace the output `(1, T, d)` that `layer`'s transcoder predicts by `fn(out)`; a handle."""
        ...

    def encode(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """`(1, T, d)` -> `(1, T, d_tc)` feature activations, exactly as the graph computes them."""
        ...

    def decoder(self, feature: FeatureRef) -> torch.Tensor:
        """`(n_out, d)`: rows written to layers feature.layer, feature.layer + 1, ... (1 row for a PLT)."""
        ...

    def eos_token_ids(self) -> set[int]: ...

    def decode(self, token_ids: Sequence[int]) -> str: ...


class _Hooks:
    """The interventions as hooks for one generation; they act only in the thread that made them."""

    def __init__(self, target: InterventionTarget, interventions: Sequence[Intervention], n_prompt: int) -> None:
        self.target = target
        self.n_prompt = n_prompt
        self.start = 0  # absolute position of the first input of the current forward pass
        self.owner = threading.get_ident()
        self.by_layer: dict[int, list[Intervention]] = defaultdict(list)
        for iv in interventions:
            self.by_layer[iv.feature.layer].append(iv)
        self.pending: dict[int, torch.Tensor] = {}  # output layer -> (1, T, d) to add this pass
        self.decoders = {iv.feature: target.decoder(iv.feature) for iv in interventions}

    def mask(self, iv: Intervention, n: int, device: torch.device) -> torch.Tensor:
        pos = torch.arange(self.start, self.start + n, device=device)  # (T,)
        m = pos >= self.n_prompt if iv.generated else torch.zeros(n, dtype=torch.bool, device=device)
        if iv.all_prompt:
            return m | (pos < self.n_prompt)
        for p in iv.positions:
            m |= pos == p
        return m

    def on_input(self, layer: int, x: torch.Tensor) -> None:
        if threading.get_ident() != self.owner:
            return
        by_feature: dict[FeatureRef, list[Intervention]] = defaultdict(list)
        for iv in self.by_layer[layer]:
            by_feature[iv.feature].append(iv)
        # An add changes a feature by its value whatever the activation is: a layer whose
        # interventions are all adds takes a = 0 (a' - a is then the value exactly) and encodes nothing.
        reads_a = any(iv.op is not Op.ADD for iv in self.by_layer[layer])
        acts = self.target.encode(layer, x) if reads_a else None  # (1, T, d_tc)
        for feature, ivs in by_feature.items():
            old = (
                acts[0, :, feature.index] if acts is not None else x.new_zeros(x.shape[1], dtype=torch.float32)
            )  # (T,)
            new = old.clone()
            for iv in ivs:  # in request order, each on top of the previous
                m = self.mask(iv, old.shape[0], old.device)
                new = torch.where(m, iv.apply(new), new)
            delta = (new - old).to(x.dtype)  # (T,)
            for k, row in enumerate(self.decoders[feature]):  # row: (d,) written to layer + k
                add = delta[None, :, None] * row.to(x.dtype)[None, None, :]  # (1, T, d)
                out_layer = layer + k
                self.pending[out_layer] = self.pending[out_layer] + add if out_layer in self.pending else add

    def on_output(self, layer: int, out: torch.Tensor) -> torch.Tensor:
        if threading.get_ident() != self.owner or layer not in self.pending:
            return out
        return out + self.pending.pop(layer).to(out.dtype)

    @contextmanager
    def installed(self) -> Iterator[None]:
        handles = []
        try:
            for layer in self.by_layer:
                handles.append(self.target.hook_input(layer, lambda x, layer=layer: self.on_input(layer, x)))
            out_layers = {f.layer + k for f, rows in self.decoders.items() for k in range(rows.shape[0])}
            for layer in sorted(out_layers):
                handles.append(self.target.hook_output(layer, lambda out, layer=layer: self.on_output(layer, out)))
            yield
        finally:
            for h in handles:
                h.remove()


@contextmanager
def _maybe_hooks(
    target: InterventionTarget, interventions: Sequence[Intervention], n_prompt: int
) -> Iterator[_Hooks | None]:
    if not interventions:
        yield None
        return
    hooks = _Hooks(target, interventions, n_prompt)
    with hooks.installed():
        yield hooks


@torch.inference_mode()
def intervened_logits(
    target: InterventionTarget, token_ids: Sequence[int], interventions: Sequence[Intervention], n_prompt: int
) -> torch.Tensor:
    """`(n_pos, vocab)` logits of one forward pass over `token_ids` with the interventions applied
    (positions >= n_prompt count as generated tokens)."""
    ids = torch.tensor([list(token_ids)], dtype=torch.long)
    with _maybe_hooks(target, interventions, n_prompt):
        logits, _ = target.forward(ids, None)
    return logits[0]


@torch.inference_mode()
def generate(
    target: InterventionTarget,
    prompt_ids: Sequence[int],
    interventions: Sequence[Intervention],
    sampling: Sampling,
    *,
    on_logits: Callable[[torch.Tensor], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Completion:
    """Token-by-token generation with the interventions hooked in (none: the default completion).
    `should_stop()` is polled before each token; True raises Cancelled (every caller left)."""
    n_prompt = len(prompt_ids)
    generator = torch.Generator().manual_seed(sampling.seed) if sampling.seed is not None else None
    eos = target.eos_token_ids()
    out: list[int] = []
    with _maybe_hooks(target, interventions, n_prompt) as hooks:
        step_ids = torch.tensor([list(prompt_ids)], dtype=torch.long)  # (1, T)
        past = None
        start = 0
        for _ in range(sampling.max_new_tokens):
            if should_stop is not None and should_stop():
                raise Cancelled("steering stopped: its caller went away")
            if hooks is not None:
                hooks.start = start
            logits, past = target.forward(step_ids, past)
            last = logits[0, -1].float()  # (vocab,)
            if on_logits is not None:
                on_logits(last)
            token = _sample(last, sampling, generator)
            out.append(token)
            if token in eos:
                break
            start += step_ids.shape[1]
            step_ids = torch.tensor([[token]], dtype=torch.long)
    return Completion(tuple(out), target.decode(out))


def _sample(logits: torch.Tensor, s: Sampling, generator: torch.Generator | None) -> int:
    if s.temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / s.temperature, dim=-1)
    if s.top_p < 1:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < s.top_p  # smallest prefix reaching top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


def steer(
    target: InterventionTarget,
    prompt_ids: Sequence[int],
    interventions: Sequence[Intervention],
    sampling: Sampling,
    *,
    with_default: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> SteerResult:
    """The steered completion and, when asked, the default one (same sampling and seed)."""
    validate(interventions, len(prompt_ids), target.shape)
    steered = generate(target, prompt_ids, interventions, sampling, should_stop=should_stop)
    default = generate(target, prompt_ids, (), sampling, should_stop=should_stop) if with_default else None
    return SteerResult(tuple(prompt_ids), steered, default)
