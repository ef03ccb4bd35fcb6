"""The vLLM plugin of circuit-serve (entry point `vllm.general_plugins`: `circuit_serve`).

vLLM calls `register` in every process it starts (the engine core runs in its own process), so
the tapped model classes resolve wherever the model is built. Registering adds architectures
under new names only (`ARCHITECTURES`); a server that does not monitor never selects them, and
vLLM serves it exactly as without the plugin.
"""

from __future__ import annotations

# model_type -> (architecture name vLLM knows it by, "module:class" of the tapped class)
ARCHITECTURES = {
    "llama": ("CircuitLlamaForCausalLM", "circuit_serve.monitoring.vllm_models:CircuitLlamaForCausalLM"),
    "gemma2": ("CircuitGemma2ForCausalLM", "circuit_serve.monitoring.vllm_models:CircuitGemma2ForCausalLM"),
    "qwen3": ("CircuitQwen3ForCausalLM", "circuit_serve.monitoring.vllm_models:CircuitQwen3ForCausalLM"),
}
LOGITS_PROCESSOR = "circuit_serve.monitoring.logits:MonitorLogitsProcessor"
STEER_PROCESSOR = "circuit_serve.monitoring.steer:SteerLogitsProcessor"  # keeps steered rows (no logits change)


def register() -> None:
    from vllm import ModelRegistry

    for name, target in ARCHITECTURES.values():
        if name not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(name, target)
