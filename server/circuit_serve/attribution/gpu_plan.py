"""Start-up wiring of the GPU memory plan (memory_plan.py) and of the replacement model's dtype.

1. `serving_dtype`: what vLLM serves in. "auto" is the checkpoint's bfloat16/float16, and bfloat16
   for float32 checkpoints on a GPU (as vLLM resolves it); float32 on the CPU.
2. `plan_for_serving(config)`: when the replacement model shares vLLM's card (attribution device
   cuda or cuda:0 with transcoders), the plan from the model's config.json and the transcoder
   files' headers; None otherwise. `apply_plan` sets vLLM's gpu_memory_utilization from it unless
   the operator gave one, and raises `PlanRefused` with the plan's reason when it cannot fit.
"""

from __future__ import annotations

import dataclasses
import json
import logging

from circuit_serve.config.serve import EngineConfig, ServeConfig
from circuit_serve.memory_plan import MemoryPlan, ModelShape, plan_memory

log = logging.getLogger(__name__)


class PlanRefused(RuntimeError):
    """The model, the transcoders and the attribution budget do not fit on the card."""


def serving_dtype(engine_dtype: str, model_config: dict, device: str) -> str:
    if engine_dtype not in ("auto", "", None):
        return {"float": "float32", "half": "float16"}.get(engine_dtype, engine_dtype)
    if not device.startswith("cuda"):
        return "float32"
    cfg = str(model_config.get("torch_dtype") or model_config.get("dtype") or "")
    return cfg if cfg in ("bfloat16", "float16") else "bfloat16"


def model_config(model) -> dict:
    from circuit_serve.tracing.hub import resolve_model_dir

    return json.loads((resolve_model_dir(model) / "config.json").read_text())


def plan_for_serving(config: ServeConfig, *, card_bytes: int | None = None, device: str | None = None) -> MemoryPlan | None:
    from circuit_serve.attribution.loading import resolve_device
    from circuit_serve.tracing.transcoders import transcoder_shape

    att = config.attribution
    device = device or resolve_device(att.device)
    if att.transcoders is None or device not in ("cuda", "cuda:0"):
        return None
    cfg = model_config(config.engine.model)
    if card_bytes is None:
        import torch

        card_bytes = torch.cuda.get_device_properties(0).total_memory
    max_len = config.engine.max_model_len or int(cfg.get("max_position_embeddings") or 8192)
    return plan_memory(
        ModelShape.from_config(cfg), transcoder_shape(att.transcoders, lazy=att.lazy_decoders), card_bytes=card_bytes,
        dtype=serving_dtype(config.engine.dtype, cfg, device), attribution_budget_bytes=att.memory_budget_bytes,
        attribution_workers=att.workers, max_model_len=max_len,
        max_num_seqs=config.engine.max_num_seqs or 256,
    )


def apply_plan(engine: EngineConfig, plan: MemoryPlan | None) -> EngineConfig:
    """The engine config vLLM starts with: gpu_memory_utilization from the plan (unless given)."""
    if plan is None:
        return engine
    log.info("%s", plan.render())
    if not plan.fits:
        raise PlanRefused(plan.reason)
    if engine.gpu_memory_utilization is not None:
        if engine.gpu_memory_utilization > plan.gpu_memory_utilization + 1e-9:
            log.warning("--gpu-memory-utilization %.3f is above the plan's %.3f: the replacement model and "
                        "transcoders may not fit next to vLLM", engine.gpu_memory_utilization,
                        plan.gpu_memory_utilization)
        return engine
    return dataclasses.replace(engine, gpu_memory_utilization=round(plan.gpu_memory_utilization, 4))
