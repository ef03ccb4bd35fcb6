"""Configuration of `circuit-serve serve`: the gRPC server, metrics and the vLLM engine.

The dataclasses here are the only readers of the command line (and of the few
environment variables named below). Everything else receives a built config.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from circuit_serve.config.attribution import AttributionConfig
from circuit_serve.config.features import FeaturesConfig
from circuit_serve.config.security import SecurityConfig
from circuit_serve.config.limits import InputLimits

_GIB = 1 << 30


@dataclass(frozen=True)
class EngineConfig:
    """What the generation engine loads and the limits it enforces."""

    model: Path
    dtype: str = "auto"  # float32 for exact-match tests; bfloat16/float16 for speed
    max_model_len: int | None = None  # None: the model's own maximum
    enforce_eager: bool = False  # required on vLLM's CPU build
    kv_cache_gib: float | None = None  # explicit KV cache size; None lets vLLM decide
    max_num_seqs: int | None = None  # concurrent sequences per engine step
    gpu_memory_utilization: float | None = None
    tensor_parallel_size: int = 1
    seed: int = 0
    served_model_name: str | None = None  # reported by ModelInfo; default: the directory name
    max_new_tokens_limit: int = 1024  # largest max_new_tokens a request may ask for
    max_top_logprobs: int = 20  # largest top_logprobs a request may ask for
    extra: dict[str, Any] = field(default_factory=dict)  # any other AsyncEngineArgs field

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
class ServeConfig:
    """The whole `serve` command."""

    engine: EngineConfig
    host: str = "0.0.0.0"
    port: int = 50051
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9090  # 0 disables the /metrics endpoint
    grace_period_s: float = 10.0  # in-flight calls get this long after SIGTERM/SIGINT
    log_level: str = "INFO"
    attribution: AttributionConfig = field(default_factory=AttributionConfig)  # --transcoders, --redis-url, ...
    features: FeaturesConfig = field(default_factory=FeaturesConfig)  # --labels, --watchlist, --monitor-all, ...
    security: SecurityConfig = field(default_factory=SecurityConfig)  # --tls-*, --auth-tokens, --reflection
    limits: InputLimits = field(default_factory=InputLimits)  # --max-prompt-bytes, --max-concurrent-rpcs, ...

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        env = os.environ.get
        g = parser.add_argument_group("server")
        g.add_argument("--host", default="0.0.0.0", help="gRPC bind address (default %(default)s)")
        g.add_argument("--port", type=int, default=50051, help="gRPC port (default %(default)s)")
        g.add_argument("--metrics-host", default="0.0.0.0", help="Prometheus bind address")
        g.add_argument("--metrics-port", type=int, default=9090,
                       help="Prometheus /metrics port; 0 disables it (default %(default)s)")
        g.add_argument("--grace-period", type=float, default=10.0, dest="grace_period_s",
                       help="seconds in-flight calls may take to finish on shutdown")
        g.add_argument("--log-level", default="INFO")

        e = parser.add_argument_group("model and engine")
        e.add_argument("--model", type=Path, default=env("CIRCUIT_MODEL"), required=env("CIRCUIT_MODEL") is None,
                       help="Hugging Face model directory or repo id org/name[@revision] (env CIRCUIT_MODEL)")
        e.add_argument("--served-model-name", default=None)
        e.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
        e.add_argument("--max-model-len", type=int, default=None, help="prompt + completion tokens")
        e.add_argument("--max-new-tokens-limit", type=int, default=1024,
                       help="largest max_new_tokens a request may ask for (default %(default)s)")
        e.add_argument("--max-top-logprobs", type=int, default=20)
        e.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs / compilation")
        e.add_argument("--kv-cache-gib", type=float,
                       default=float(env("VLLM_CPU_KVCACHE_SPACE")) if env("VLLM_CPU_KVCACHE_SPACE") else None,
                       help="KV cache size in GiB (default: env VLLM_CPU_KVCACHE_SPACE, else vLLM's choice)")
        e.add_argument("--max-num-seqs", type=int, default=None)
        e.add_argument("--gpu-memory-utilization", type=float, default=None)
        e.add_argument("--tensor-parallel-size", type=int, default=1)
        e.add_argument("--seed", type=int, default=0)
        e.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE",
                       help="any other vllm AsyncEngineArgs field; VALUE is JSON when it parses "
                            "(repeatable, e.g. --engine-arg max_num_batched_tokens=2048)")
        AttributionConfig.add_arguments(parser)
        FeaturesConfig.add_arguments(parser)
        SecurityConfig.add_arguments(parser)
        InputLimits.add_arguments(parser)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ServeConfig:
        engine = EngineConfig(
            model=Path(args.model),
            dtype=args.dtype,
            max_model_len=args.max_model_len,
            enforce_eager=args.enforce_eager,
            kv_cache_gib=args.kv_cache_gib,
            max_num_seqs=args.max_num_seqs,
            gpu_memory_utilization=args.gpu_memory_utilization,
            tensor_parallel_size=args.tensor_parallel_size,
            seed=args.seed,
            served_model_name=args.served_model_name,
            max_new_tokens_limit=args.max_new_tokens_limit,
            max_top_logprobs=args.max_top_logprobs,
            extra=parse_engine_args(args.engine_arg),
        )
        return cls(
            engine=engine,
            host=args.host,
            port=args.port,
            metrics_host=args.metrics_host,
            metrics_port=args.metrics_port,
            grace_period_s=args.grace_period_s,
            log_level=args.log_level,
            attribution=AttributionConfig.from_args(args),
            features=FeaturesConfig.from_args(args),
            security=SecurityConfig.from_args(args),
            limits=InputLimits.from_args(args),
        )


def parse_engine_args(items: list[str]) -> dict[str, Any]:
    """`["a=1", "b=x"]` -> `{"a": 1, "b": "x"}` (values parsed as JSON when they parse)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"--engine-arg expects KEY=VALUE, got {item!r}")
        try:
            out[key.replace("-", "_")] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = raw
    return out
