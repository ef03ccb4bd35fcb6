"""Configuration of `circuit-serve serve`: the gRPC server, metrics and the vLLM engine.

The dataclasses here are the only readers of the command line (and of the few environment
variables they declare). Each field is declared once (config/option.py); everything else receives
a built config.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from circuit_serve.config.attribution import AttributionConfig
from circuit_serve.config.features import FeaturesConfig
from circuit_serve.config.limits import InputLimits
from circuit_serve.config.option import OptionError, Options, declared, option
from circuit_serve.config.security import SecurityConfig
from circuit_serve.config.tracing import MODEL

_GIB = 1 << 30


def engine_arg(item: str) -> tuple[str, Any]:
    """`"a=1"` -> `("a", 1)` (the value parsed as JSON when it parses): one `--engine-arg`."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expects KEY=VALUE, got {item!r}")
    try:
        return key.replace("-", "_"), json.loads(raw)
    except json.JSONDecodeError:
        return key.replace("-", "_"), raw


def cpu_list(text: str) -> frozenset[int]:
    """`"0"`, `"0-3,8"` -> the CPUs, each one this process may run on (argparse type)."""
    if not hasattr(os, "sched_getaffinity"):
        raise argparse.ArgumentTypeError("placing processes on CPUs needs Linux")
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CPU numbers and ranges such as 0 or 0-3,8, got {text!r}") from None
    allowed = os.sched_getaffinity(0)
    if not cpus or not cpus <= allowed:
        raise argparse.ArgumentTypeError(
            f"CPUs {sorted(cpus - allowed) or text!r} are not among this process's CPUs {sorted(allowed)}"
        )
    return frozenset(cpus)


@dataclass(frozen=True)
class EngineConfig(Options):
    """What the generation engine loads and the limits it enforces."""

    group: ClassVar[str] = "model and engine"

    model: Path = declared(MODEL)
    dtype: str = option(  # float32 for exact-match tests; bfloat16/float16 for speed
        "auto", flag="--dtype", help="auto, float32, bfloat16 or float16"
    )
    max_model_len: int | None = option(  # None: the model's own maximum
        None, flag="--max-model-len", type=int, ge=1, help="prompt + completion tokens (default: the model's)"
    )
    enforce_eager: bool = option(  # required on vLLM's CPU build
        False, flag="--enforce-eager", action="store_true", help="no CUDA graphs / compilation"
    )
    kv_cache_gib: float | None = option(  # explicit KV cache size; None lets vLLM decide
        None,
        flag="--kv-cache-gib",
        type=float,
        env="VLLM_CPU_KVCACHE_SPACE",
        gt=0,
        help="KV cache size in GiB (default: vLLM's choice)",
    )
    max_num_seqs: int | None = option(  # concurrent sequences per engine step
        None, flag="--max-num-seqs", type=int, ge=1, help="concurrent sequences per engine step"
    )
    gpu_memory_utilization: float | None = option(
        None,
        flag="--gpu-memory-utilization",
        type=float,
        gt=0,
        le=1,
        help="share of the GPU's memory vLLM may take (default: vLLM's, or the memory plan's)",
    )
    tensor_parallel_size: int = option(1, flag="--tensor-parallel-size", ge=1)
    seed: int = option(0, flag="--seed")
    served_model_name: str | None = option(  # reported by ModelInfo
        None, flag="--served-model-name", type=str, help="the name ModelInfo reports (default: the directory name)"
    )
    max_new_tokens_limit: int = option(
        1024,
        flag="--max-new-tokens-limit",
        ge=1,
        limits=("generation_max_new_tokens",),
        help="largest max_new_tokens a request may ask for",
    )
    max_top_logprobs: int = option(
        20,
        flag="--max-top-logprobs",
        ge=0,
        limits=("generation_max_top_logprobs",),
        help="largest top_logprobs a request may ask for",
    )
    engine_core_cpus: frozenset[int] | None = option(  # None: where the OS puts it
        None,
        flag="--engine-core-cpus",
        type=cpu_list,
        metavar="CPUS",
        help="CPUs (e.g. 0 or 0-3,8) for vLLM's engine-core process; on vLLM's CPU build, its worker's "
        "(VLLM_CPU_OMP_THREADS_BIND) leave the other cores to the server (server/docs/benchmarks.md)",
    )
    extra: dict[str, Any] = option(  # any other AsyncEngineArgs field
        default_factory=dict,
        flag="--engine-arg",
        action="append",
        type=engine_arg,
        metavar="KEY=VALUE",
        convert=dict,
        help="any other vllm AsyncEngineArgs field; VALUE is JSON when it parses "
        "(repeatable, e.g. --engine-arg max_num_batched_tokens=2048)",
    )

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model.name

    def engine_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `vllm.AsyncEngineArgs`."""
        kwargs: dict[str, Any] = {
            "model": str(self.model),
            "dtype": self.dtype,
            "enforce_eager": self.enforce_eager,
            "tensor_parallel_size": self.tensor_parallel_size,
            "seed": self.seed,
            "max_logprobs": self.max_top_logprobs,
            # our API defines the sampling defaults, not the model's generation_config.json
            "generation_config": "vllm",
            "served_model_name": self.model_name,  # the `model_name` label of vLLM's metrics
        }
        optional = {
            "max_model_len": self.max_model_len,
            "max_num_seqs": self.max_num_seqs,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "kv_cache_memory_bytes": int(self.kv_cache_gib * _GIB) if self.kv_cache_gib else None,
        }
        kwargs.update({k: v for k, v in optional.items() if v is not None})
        kwargs.update(self.extra)
        return kwargs


@dataclass(frozen=True)
class ServeConfig(Options):
    """The whole `serve` command."""

    group: ClassVar[str] = "server"
    sections: ClassVar[dict[str, type]] = {
        "engine": EngineConfig,
        "attribution": AttributionConfig,  # --transcoders, --redis-url, ...
        "features": FeaturesConfig,  # --labels, --watchlist, --monitor-all, ...
        "security": SecurityConfig,  # --tls-*, --auth-tokens, --reflection
        "limits": InputLimits,  # --max-prompt-bytes, --max-concurrent-rpcs, ...
    }

    engine: EngineConfig
    host: str = option("0.0.0.0", flag="--host", help="gRPC bind address")
    port: int = option(50051, flag="--port", ge=0, le=65535, help="gRPC port")
    http_port: int | None = option(  # None: no HTTP front door
        None,
        flag="--http-port",
        type=int,
        ge=0,
        le=65535,
        help="OpenAI-compatible HTTP port on --host (same engine, tokens and TLS as gRPC); off when not given",
    )
    metrics_host: str = option("0.0.0.0", flag="--metrics-host", help="Prometheus bind address")
    metrics_port: int = option(
        9090, flag="--metrics-port", ge=0, le=65535, help="Prometheus /metrics port; 0 disables it"
    )
    grace_period_s: float = option(  # after SIGTERM/SIGINT
        10.0, flag="--grace-period", ge=0, help="seconds in-flight calls may take to finish on shutdown"
    )
    health_port: int = option(  # for the kubelet's gRPC probes, which speak no TLS
        0,
        flag="--health-port",
        ge=0,
        le=65535,
        help="also serve grpc.health.v1 alone, in plaintext, on this port (with TLS on the main port); 0: off",
    )
    engine_dead_exit_s: float = option(  # so that the kubelet replaces a pod whose vLLM engine died
        10.0,
        flag="--engine-dead-exit-s",
        ge=0,
        le=30,
        help="when vLLM's engine dies: health turns NOT_SERVING at once and the process exits non-zero "
        "within this many seconds",
    )
    log_level: str = option("INFO", flag="--log-level", help="DEBUG, INFO, WARNING or ERROR")
    attribution: AttributionConfig = field(default_factory=AttributionConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    limits: InputLimits = field(default_factory=InputLimits)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def health_address(self) -> str | None:
        return f"{self.host}:{self.health_port}" if self.health_port else None

    def check(self) -> None:
        if self.log_level.upper() not in logging.getLevelNamesMapping():
            raise OptionError("--log-level", f"must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}")
