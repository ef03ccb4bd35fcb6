"""vLLM model classes with watched-feature taps: vLLM's own Llama, Gemma-2 and Qwen3, plus the taps.

Registered by the plugin (see `plugin`) under the names in `ARCHITECTURES`; the server selects
one with `hf_overrides={"architectures": [name], "circuit_monitor": spec_dir}` so that only a
server that monitors loads them. After the weights load, `taps.install` wraps each layer's
pre-MLP norm and `steer.install` each layer's transcoder output module; before a forward pass
with steered requests the batch layout goes to the steering bank; after each forward pass the batch layout (token offsets per request, positions)
is noted for the logits processor, which runs next in the same process.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.forward_context import get_forward_context
from vllm.model_executor.models.gemma2 import Gemma2ForCausalLM
from vllm.model_executor.models.llama import LlamaForCausalLM
from vllm.model_executor.models.qwen3 import Qwen3ForCausalLM

from circuit_serve.monitoring import steer, taps
from circuit_serve.monitoring.spec import SPEC_KEY, MonitorSpec


class _Tapped:
    _circuit_model_type = ""

    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        spec_dir = getattr(vllm_config.model_config.hf_config, SPEC_KEY, None)
        if not spec_dir:
            raise ValueError(f"{type(self).__name__} needs hf_overrides[{SPEC_KEY!r}] (the monitor spec directory)")
        self._circuit_spec = MonitorSpec.load(spec_dir)
        self._circuit_max_tokens = int(vllm_config.scheduler_config.max_num_batched_tokens)
        self._circuit_bank: taps.TapBank | None = None

    def load_weights(self, weights):
        loaded = super().load_weights(weights)
        self._circuit_bank = taps.install(
            self, self._circuit_spec, model_type=self._circuit_model_type, max_tokens=self._circuit_max_tokens
        )
        steer.install(self, self._circuit_bank, model_type=self._circuit_model_type)
        return loaded

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        bank = self._circuit_bank
        steering = bank is not None and bank.steer is not None and bool(bank.steer.rows)
        if steering:  # the batch layout, before the layers run (steered requests' rows)
            bank.steer.begin_pass(positions, _query_start())
        try:
            out = super().forward(input_ids, positions, intermediate_tensors, inputs_embeds, **kwargs)
        finally:
            if steering:
                bank.steer.end_pass()
        if bank is not None:  # no batch layout read (no device sync) while nobody is monitored
            bank.finish_pass()
            bank.note_batch(positions, _query_start() if bank.enabled else None)
        return out


def _query_start() -> list[int]:
    """Token offsets of the batch's requests, in the persistent batch's order (num_reqs + 1)."""
    metadata = get_forward_context().attn_metadata
    if isinstance(metadata, list):
        metadata = metadata[0] if metadata else None
    if not metadata:
        return [0]
    first = next(iter(metadata.values()))
    qsl = first.query_start_loc
    return qsl.tolist() if isinstance(qsl, torch.Tensor) else list(qsl)


class CircuitLlamaForCausalLM(_Tapped, LlamaForCausalLM):
    _circuit_model_type = "llama"


class CircuitGemma2ForCausalLM(_Tapped, Gemma2ForCausalLM):
    _circuit_model_type = "gemma2"


class CircuitQwen3ForCausalLM(_Tapped, Qwen3ForCausalLM):
    _circuit_model_type = "qwen3"
