"""Start-up of the tracing side: the GPU memory plan (memory_plan.py), the replacement model's
device and dtype, and the replacement model itself (HF model + transcoders) as a server part.

1. `serving_dtype`: what vLLM serves in. "auto" is the checkpoint's bfloat16/float16, and bfloat16
   for float32 checkpoints on a GPU (as vLLM resolves it); float32 on the CPU.
2. `plan_for_serving(config)`: when the replacement model shares vLLM's card (attribution device
   cuda or cuda:0 with transcoders), the plan from the model's config.json and the transcoder
   files' headers; None otherwise. `apply_plan` sets vLLM's gpu_memory_utilization from it unless
   the operator gave one, and raises `PlanRefused` with the plan's reason when it cannot fit.
3. `resolve_dtype`: the replacement model's dtype (explicit, else generation's; see 1).
4. `Replacement`: the part that loads the replacement model off the event loop in `start()`;
   the attribution and features services are built with it and read `model` in their own `start()`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch

from circuit_serve.config.attribution import AttributionConfig
from circuit_serve.config.serve import EngineConfig, ServeConfig
from circuit_serve.memory_plan import MemoryPlan, ModelShape, plan_memory
from circuit_serve.tracing import ReplacementModel
from circuit_serve.tracing.hub import resolve_model_dir
from circuit_serve.tracing.transcoders import transcoder_shape

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- device, dtype, plan


class PlanRefused(RuntimeError):
    """The model, the transcoders and the attribution budget do not fit on the card."""


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def serving_dtype(engine_dtype: str, model_config: dict, device: str) -> str:
    if engine_dtype not in ("auto", "", None):
        return {"float": "float32", "half": "float16"}.get(engine_dtype, engine_dtype)
    if not device.startswith("cuda"):
        return "float32"
    cfg = str(model_config.get("torch_dtype") or model_config.get("dtype") or "")
    return cfg if cfg in ("bfloat16", "float16") else "bfloat16"


def model_config(model) -> dict:
    return json.loads((resolve_model_dir(model) / "config.json").read_text())


def plan_for_serving(
    config: ServeConfig, *, card_bytes: int | None = None, device: str | None = None
) -> MemoryPlan | None:
    att = config.attribution
    device = device or resolve_device(att.device)
    if att.transcoders is None or device not in ("cuda", "cuda:0"):
        return None
    cfg = model_config(config.engine.model)
    if card_bytes is None:
        card_bytes = torch.cuda.get_device_properties(0).total_memory
    max_len = config.engine.max_model_len or int(cfg.get("max_position_embeddings") or 8192)
    return plan_memory(
        ModelShape.from_config(cfg),
        transcoder_shape(att.transcoders, lazy=att.lazy_decoders),
        card_bytes=card_bytes,
        dtype=serving_dtype(config.engine.dtype, cfg, device),
        attribution_budget_bytes=att.memory_budget_bytes,
        attribution_workers=att.workers,
        max_model_len=max_len,
        max_num_seqs=config.engine.max_num_seqs or 256,
        monitor_store_bytes=config.features.monitor_cache_mib << 20,
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
            log.warning(
                "--gpu-memory-utilization %.3f is above the plan's %.3f: the replacement model and "
                "transcoders may not fit next to vLLM",
                engine.gpu_memory_utilization,
                plan.gpu_memory_utilization,
            )
        return engine
    return dataclasses.replace(engine, gpu_memory_utilization=round(plan.gpu_memory_utilization, 4))


def resolve_dtype(
    config: AttributionConfig, serve_dtype: str, device: str = "cpu", model_dir: Path | None = None
) -> str:
    """The attribution dtype: explicit, else generation's. "auto" is float32 on the CPU and the
    serving dtype (bfloat16/float16) on a GPU; edges and completeness accumulate in float32."""
    dtype = config.dtype or serve_dtype
    if dtype in ("auto", "float", "") and device.startswith("cuda") and model_dir is not None:
        return serving_dtype("auto", model_config(model_dir), device)
    return "float32" if dtype in ("auto", "float", "") else dtype


# ---------------------------------------------------------------------------- the replacement model


def load_replacement(config: AttributionConfig, model_dir: Path, *, serve_dtype: str = "auto") -> ReplacementModel:
    """The `ReplacementModel` of `model_dir` with `config.transcoders` (blocking; seconds)."""
    assert config.transcoders is not None
    device = resolve_device(config.device)
    dtype = resolve_dtype(config, serve_dtype, device, model_dir)
    started = time.perf_counter()
    rm = ReplacementModel.from_pretrained(
        model_dir,
        config.transcoders,
        dtype=dtype,
        device=device,
        memory_budget_bytes=config.memory_budget_bytes,
        identity_cache=config.identity_cache,
        lazy_decoders=config.lazy_decoders,
    )
    t = rm.transcoders
    log.info(
        "replacement model loaded on %s in %s (%.1fs): transcoders %s (%s, %d layers x %d features, %s, "
        "decoders %s; %.2f GiB held)",
        device,
        dtype,
        time.perf_counter() - started,
        t.name,
        t.kind,
        t.n_layers,
        t.d_transcoder,
        t.activation,
        "read lazily" if t.lazy else "in memory",
        t.resident_bytes() / 2**30,
    )
    return rm


class Replacement:
    """The replacement model as a server part: `start()` loads it (in a worker thread, so health
    checks keep being answered); `model` is None before that and on a server without transcoders."""

    def __init__(
        self, load: Callable[[], ReplacementModel] | None = None, *, model: ReplacementModel | None = None
    ) -> None:
        """`load`: the blocking loader (None: the server runs without transcoders); `model`: one
        already loaded (tools, tests), which `start()` keeps."""
        self._load = load
        self._model = model

    @classmethod
    def from_config(cls, config: AttributionConfig, model_dir: Path, *, serve_dtype: str) -> Replacement:
        """Loads `config.transcoders` over `model_dir` in `start()`; nothing without --transcoders."""
        if config.transcoders is None:
            return cls(None)
        return cls(lambda: load_replacement(config, model_dir, serve_dtype=serve_dtype))

    @property
    def model(self) -> ReplacementModel | None:
        return self._model

    async def start(self) -> None:
        if self._load is not None and self._model is None:
            self._model = await asyncio.to_thread(self._load)

    def shutdown(self) -> None:
        """Nothing to release: the model's memory goes with the process."""

    def describe(self) -> dict | None:
        """The transcoder set loaded (ModelInfo.transcoders); None before loading or without one."""
        return None if self._model is None else self._model.transcoders.describe()
