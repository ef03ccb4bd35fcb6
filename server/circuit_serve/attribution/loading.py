"""Load the replacement model (HF model + transcoders) for the attribution engine at start-up."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from circuit_serve.attribution.engine import GraphSerializer, TracingEngine
from circuit_serve.config.attribution import AttributionConfig

log = logging.getLogger(__name__)


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(config: AttributionConfig, serve_dtype: str, device: str = "cpu", model_dir: Path | None = None) -> str:
    """The attribution dtype: explicit, else generation's. "auto" is float32 on the CPU and the
    serving dtype (bfloat16/float16) on a GPU; edges and completeness accumulate in float32."""
    from circuit_serve.attribution.gpu_plan import model_config, serving_dtype

    dtype = config.dtype or serve_dtype
    if dtype in ("auto", "float", "") and device.startswith("cuda") and model_dir is not None:
        return serving_dtype("auto", model_config(model_dir), device)
    return "float32" if dtype in ("auto", "float", "") else dtype


def load_replacement(config: AttributionConfig, model_dir: Path, *, serve_dtype: str = "auto"):
    """The `ReplacementModel` of `model_dir` with `config.transcoders` (blocking; seconds)."""
    from circuit_serve.tracing import ReplacementModel

    assert config.transcoders is not None
    device = resolve_device(config.device)
    dtype = resolve_dtype(config, serve_dtype, device, model_dir)
    started = time.perf_counter()
    rm = ReplacementModel.from_pretrained(
        model_dir, config.transcoders, dtype=dtype, device=device, memory_budget_bytes=config.memory_budget_bytes,
        identity_cache=config.identity_cache, lazy_decoders=config.lazy_decoders,
    )
    t = rm.transcoders
    log.info("replacement model loaded on %s in %s (%.1fs): transcoders %s (%s, %d layers x %d features, %s, "
             "decoders %s; %.2f GiB held)", device, dtype, time.perf_counter() - started, t.name, t.kind, t.n_layers,
             t.d_transcoder, t.activation, "read lazily" if t.lazy else "in memory", t.resident_bytes() / 2**30)
    return rm


def make_engine(rm, *, serialize: GraphSerializer, graph_format: int) -> TracingEngine:
    return TracingEngine(rm, serialize=serialize, graph_format=graph_format)


async def start_attribution(service, config: AttributionConfig, model_dir: Path, *, serve_dtype: str,
                            serialize: GraphSerializer, graph_format: int):
    """Load the replacement model off the event loop and hand it to `service`; returns it (the
    features service shares it). Without `--transcoders` does nothing and returns None."""
    import asyncio

    if config.transcoders is None:
        return None
    rm = await asyncio.to_thread(load_replacement, config, model_dir, serve_dtype=serve_dtype)
    service.engine = make_engine(rm, serialize=serialize, graph_format=graph_format)
    return rm
