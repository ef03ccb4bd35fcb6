"""The replacement model as steering sees it: hooks at the transcoder input and output of a layer.

Built on the tracing engine's own pieces (module map in `tracing.architecture`, the transcoder
input transform in `tracing.local_model`, the maths in `TranscoderSet`), so an intervened
feature's "current value" is exactly its activation in the attribution graph.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch

from circuit_serve.domain.features import FeatureRef, TranscoderShape
from circuit_serve.tracing.architecture import Architecture, describe
from circuit_serve.tracing.local_model import transcoder_input
from circuit_serve.tracing.replacement import ReplacementModel
from circuit_serve.tracing.transcoders import TranscoderSet


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs.get("hidden_states", next(iter(kwargs.values())))


class ModelTarget:
    """`steering.InterventionTarget` over an HF causal LM and its transcoder set."""

    def __init__(
        self,
        model: torch.nn.Module,
        transcoders: TranscoderSet,
        tokenizer: Any,
        arch: Architecture | None = None,
        lock: threading.Lock | None = None,
    ) -> None:
        self.model = model
        self.tcs = transcoders
        self.tokenizer = tokenizer
        self.arch = arch or describe(model)
        self.shape = TranscoderShape(transcoders.n_layers, transcoders.d_transcoder)
        self._device = self.arch.embed.weight.device
        self._lock = lock or contextlib.nullcontext()

    @classmethod
    def of(cls, rm: ReplacementModel) -> ModelTarget:
        """Over the engine's replacement model, sharing its one-forward-pass-at-a-time lock (the
        engine's recording hooks must never see a steering pass, and the reverse is handled by
        the steering hooks acting only in their own thread)."""
        return cls(rm.model, rm.transcoders, rm.tokenizer, rm.arch, rm.forward_lock)

    def forward(self, input_ids: torch.Tensor, past: Any) -> tuple[torch.Tensor, Any]:
        with self._lock:
            out = self.model(input_ids=input_ids.to(self._device), past_key_values=past, use_cache=True)
        return out.logits, out.past_key_values

    def hook_input(self, layer: int, fn: Callable[[torch.Tensor], None]) -> Any:
        """norm2's input is x_mid; the transcoder input is x_mid through the configured hook's map."""
        norm2 = self.arch.layers[layer].norm2

        def pre(module, args, kwargs):
            x_mid = _first_tensor(args, kwargs).float()  # (1, T, d)
            fn(transcoder_input(self.arch, self.tcs, layer, x_mid, self.arch.norm_scale(norm2, x_mid)))

        return norm2.register_forward_pre_hook(pre, with_kwargs=True)

    def hook_output(self, layer: int, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
        part = self.arch.layers[layer]
        after_norm = part.norm_pf is not None and self.tcs.feature_output_hook == "hook_mlp_out"
        module = part.norm_pf if after_norm else part.mlp
        return module.register_forward_hook(lambda m, args, out: fn(out))

    def encode(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        return self.tcs.encode(layer, x).float()

    def decoder(self, feature: FeatureRef) -> torch.Tensor:
        rows = self.tcs.decoder_rows(feature.layer, torch.tensor([feature.index], device=self.tcs.device))
        return rows[0].float()  # (n_out, d)

    def eos_token_ids(self) -> set[int]:
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        if eos is None:
            eos = self.tokenizer.eos_token_id
        return set(eos) if isinstance(eos, list | tuple) else ({eos} if eos is not None else set())

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)
