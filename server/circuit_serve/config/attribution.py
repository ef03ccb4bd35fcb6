"""Configuration of the attribution service: transcoders, limits, workers, graph cache,
Redis and the served-completions store.

The only reader of these flags and of `CIRCUIT_TRANSCODERS` / `CIRCUIT_REDIS_URL`.
`serve` adds the flags with `AttributionConfig.add_arguments` and builds the
config with `AttributionConfig.from_args`.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

_KIB = 1 << 10
from circuit_serve.config.tracing import identity_cache_dir

_MIB = 1 << 20
_GIB = 1 << 30
# gRPC's default receive limit is 4 MiB; a chunk's framing (key, tags, lengths) stays under 16 KiB.
MAX_RESULT_CHUNK_BYTES = 4 * _MIB - 16 * _KIB


@dataclass(frozen=True)
class AttributionConfig:
    transcoders: Path | None = None  # None: Attribution RPCs answer FAILED_PRECONDITION
    device: str = "auto"  # where the replacement model runs: auto (cuda when present), cpu, cuda, cuda:1
    dtype: str | None = None  # None: the same dtype as generation (float32 when that is "auto")
    # ---- admission
    workers: int = 1  # graphs computed at once on this device
    max_queued: int = 8  # graphs waiting for a worker; more -> RESOURCE_EXHAUSTED
    max_queued_per_tenant: int = 4  # of those, waiting for one tenant (a named token); more -> RESOURCE_EXHAUSTED
    max_prompt_tokens: int = 512  # attribution input length (BOS included)
    max_feature_nodes_limit: int = 16384  # largest max_feature_nodes a request may ask for
    max_batch_size: int = 1024  # largest backward batch a request may ask for
    memory_budget_bytes: int = 8 * _GIB  # the engine's peak-memory estimate (real active-feature count) must fit
    result_chunk_bytes: int = 3 * _MIB  # larger results go out as chunks of at most this (attribution.proto)
    # ---- graph cache
    redis_url: str | None = None  # None: an in-process LRU serves as the cache
    redis_prefix: str = "circuit:"  # every Redis key this server writes starts with it
    redis_timeout_s: float = 0.5  # connect/read timeout of each Redis command
    cache_ttl_s: float = 7 * 24 * 3600.0
    cache_max_entry_bytes: int = 64 * _MIB  # larger graphs are served but not cached
    cache_compression: str = "none"  # "none" or "zlib": how entries are stored (cache/entry.py)
    memory_cache_bytes: int = 512 * _MIB  # size of the in-process LRU (used without Redis)
    lock_ttl_s: float = 30.0  # replica lock expiry (renewed while computing)
    lock_wait_s: float = 120.0  # longest wait for another replica's graph before computing it here
    # ---- served completions
    completions_ttl_s: float = 24 * 3600.0
    completions_max: int = 100_000  # in-process records kept (LRU)
    completions_max_bytes: int = 256 * _MIB  # and their total size (token ids at 4 bytes + 256 a record)
    # ---- loading
    identity_cache: Path | None = None  # weight-file hashes kept between starts (None: hash every start)
    lazy_decoders: bool = True  # decoder rows read from the safetensors files when a graph needs them

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        env = os.environ.get
        d = AttributionConfig
        g = parser.add_argument_group("attribution")
        g.add_argument("--transcoders", type=Path, default=env("CIRCUIT_TRANSCODERS"),
                       help="transcoder directory or Hugging Face repo id org/name[@revision] (circuit-tracer "
                            "formats; env CIRCUIT_TRANSCODERS); "
                            "without it the attribution RPCs answer FAILED_PRECONDITION")
        g.add_argument("--attribution-device", default=d.device, help="auto, cpu, cuda or cuda:N")
        g.add_argument("--attribution-dtype", default=None,
                       help="dtype of the replacement model (default: generation's dtype)")
        g.add_argument("--attribution-workers", type=int, default=d.workers,
                       help="graphs computed at once (default %(default)s)")
        g.add_argument("--attribution-max-queued", type=int, default=d.max_queued,
                       help="graphs waiting for a worker before RESOURCE_EXHAUSTED (default %(default)s)")
        g.add_argument("--attribution-max-queued-per-tenant", type=int, default=d.max_queued_per_tenant,
                       help="of those, graphs one tenant (token name) may have waiting (default %(default)s)")
        g.add_argument("--attribution-max-prompt-tokens", type=int, default=d.max_prompt_tokens)
        g.add_argument("--attribution-max-feature-nodes", type=int, default=d.max_feature_nodes_limit,
                       help="largest max_feature_nodes a request may ask for (default %(default)s)")
        g.add_argument("--attribution-max-batch-size", type=int, default=d.max_batch_size)
        g.add_argument("--attribution-memory-budget-gib", type=float, default=d.memory_budget_bytes / _GIB,
                       help="peak working memory one graph may need, as the engine estimates it once the "
                            "prompt's active features are known (default %(default)s GiB)")
        g.add_argument("--attribution-result-chunk-kib", type=int, default=d.result_chunk_bytes // _KIB,
                       help="results larger than this are streamed as chunks of at most this size, so that "
                            "clients with gRPC's default 4 MiB receive limit get them (default %(default)s; "
                            f"at most {MAX_RESULT_CHUNK_BYTES // _KIB})")

        g.add_argument("--cache-dir", type=Path, default=None,
                       help="where weight-file hashes are kept so restarts do not re-read the weights "
                            "(default $CIRCUIT_CACHE_DIR, else ~/.cache/circuit-serve)")
        g.add_argument("--eager-decoders", action="store_true",
                       help="hold every transcoder decoder in memory instead of reading the rows a graph needs "
                            "from the safetensors files")

        c = parser.add_argument_group("graph cache and Redis")
        c.add_argument("--redis-url", default=env("CIRCUIT_REDIS_URL"),
                       help="redis://host:port/db for the graph cache, locks and served completions "
                            "(env CIRCUIT_REDIS_URL); without it an in-process LRU is used")
        c.add_argument("--redis-prefix", default=d.redis_prefix)
        c.add_argument("--redis-timeout", type=float, default=d.redis_timeout_s, dest="redis_timeout_s")
        c.add_argument("--graph-cache-ttl", type=float, default=d.cache_ttl_s, dest="graph_cache_ttl_s",
                       help="seconds a cached graph lives (default %(default)s)")
        c.add_argument("--graph-cache-max-entry-mib", type=float, default=d.cache_max_entry_bytes / _MIB)
        c.add_argument("--graph-cache-compression", choices=("none", "zlib"), default=d.cache_compression,
                       help="store cache entries as they are (a hit only slices them) or zlib-compressed "
                            "(about 4x smaller, a decompression per hit) (default %(default)s)")
        c.add_argument("--graph-cache-memory-mib", type=float, default=d.memory_cache_bytes / _MIB,
                       help="size of the in-process cache used without Redis")
        c.add_argument("--completions-ttl", type=float, default=d.completions_ttl_s, dest="completions_ttl_s",
                       help="seconds a served generation can be audited by request_id (default %(default)s)")
        c.add_argument("--completions-max", type=int, default=d.completions_max,
                       help="served generations kept in memory for audits (default %(default)s)")
        c.add_argument("--completions-max-mib", type=float, default=d.completions_max_bytes / _MIB,
                       help="their total size in memory (default %(default)s MiB)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AttributionConfig:
        config = cls(
            transcoders=Path(args.transcoders) if args.transcoders else None,
            device=args.attribution_device,
            dtype=args.attribution_dtype,
            workers=args.attribution_workers,
            max_queued=args.attribution_max_queued,
            max_queued_per_tenant=args.attribution_max_queued_per_tenant,
            max_prompt_tokens=args.attribution_max_prompt_tokens,
            max_feature_nodes_limit=args.attribution_max_feature_nodes,
            max_batch_size=args.attribution_max_batch_size,
            memory_budget_bytes=int(args.attribution_memory_budget_gib * _GIB),
            result_chunk_bytes=args.attribution_result_chunk_kib * _KIB,
            redis_url=args.redis_url or None,
            redis_prefix=args.redis_prefix,
            redis_timeout_s=args.redis_timeout_s,
            cache_ttl_s=args.graph_cache_ttl_s,
            cache_max_entry_bytes=int(args.graph_cache_max_entry_mib * _MIB),
            cache_compression=args.graph_cache_compression,
            memory_cache_bytes=int(args.graph_cache_memory_mib * _MIB),
            completions_ttl_s=args.completions_ttl_s,
            completions_max=args.completions_max,
            completions_max_bytes=int(args.completions_max_mib * _MIB),
            identity_cache=args.cache_dir or identity_cache_dir(),
            lazy_decoders=not args.eager_decoders,
        )
        config.validate()
        return config

    def validate(self) -> None:
        if self.workers < 1:
            raise ValueError(f"--attribution-workers must be >= 1, got {self.workers}")
        if self.max_queued < 0:
            raise ValueError(f"--attribution-max-queued must be >= 0, got {self.max_queued}")
        if self.max_queued_per_tenant < 0:
            raise ValueError(f"--attribution-max-queued-per-tenant must be >= 0, got {self.max_queued_per_tenant}")
        if self.completions_max < 1 or self.completions_max_bytes < 1:
            raise ValueError("--completions-max and --completions-max-mib must be positive")
        if not _KIB <= self.result_chunk_bytes <= MAX_RESULT_CHUNK_BYTES:
            raise ValueError(f"--attribution-result-chunk-kib must be in [1, {MAX_RESULT_CHUNK_BYTES // _KIB}], "
                             f"got {self.result_chunk_bytes / _KIB:g}")
        if self.cache_compression not in ("none", "zlib"):
            raise ValueError(f"--graph-cache-compression must be none or zlib, got {self.cache_compression!r}")
        if self.transcoders is not None and not self.transcoders.is_dir():
            from circuit_serve.tracing.hub import parse_repo_spec

            if parse_repo_spec(str(self.transcoders)) is None:
                raise ValueError(f"--transcoders {self.transcoders} is neither a directory nor a Hugging Face "
                                 "repo id (org/name[/subfolder][@revision])")
