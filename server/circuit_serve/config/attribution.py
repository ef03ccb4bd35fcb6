"""Configuration of the attribution service: transcoders, limits, workers, graph cache,
Redis and the served-completions store.

Each field is declared once (config/option.py): its flag of `circuit-serve serve`, default, unit,
bound, environment variable (`CIRCUIT_TRANSCODERS`, `CIRCUIT_REDIS_URL`) and `circuit.v1.Limits` name.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

from circuit_serve.config.option import OptionError, Options, declared, option
from circuit_serve.config.tracing import TRANSCODERS, identity_cache_dir
from circuit_serve.tracing.hub import parse_repo_spec

_KIB = 1 << 10
_MIB = 1 << 20
_GIB = 1 << 30
# gRPC's default receive limit is 4 MiB; a chunk's framing (key, tags, lengths) stays under 16 KiB.
MAX_RESULT_CHUNK_BYTES = 4 * _MIB - 16 * _KIB

_CACHE = "graph cache and Redis"
_FLEET = "fleet job queue (with --redis-url)"
ROLES = ("all", "generation", "attribution")


@dataclass(frozen=True)
class AttributionConfig(Options):
    group: ClassVar[str] = "attribution"

    transcoders: Path | None = declared(  # None: Attribution RPCs answer FAILED_PRECONDITION
        replace(TRANSCODERS, help=TRANSCODERS.help + "; without it the attribution RPCs answer FAILED_PRECONDITION"),
        None,
    )
    device: str = option(  # where the replacement model runs
        "auto", flag="--attribution-device", help="auto (cuda when present), cpu, cuda or cuda:N"
    )
    dtype: str | None = option(  # None: the same dtype as generation (float32 when that is "auto")
        None, flag="--attribution-dtype", type=str, help="dtype of the replacement model (default: generation's dtype)"
    )
    role: str = option(
        "all",
        flag="--role",
        choices=ROLES,
        help="all: generation and graphs; generation: no graph is computed here (they are queued for the "
        "fleet and relayed; needs --redis-url); attribution: loads no vLLM and only computes graphs",
    )
    # ---- admission
    workers: int = option(1, flag="--attribution-workers", ge=1, help="graphs computed at once on this device")
    max_queued: int = option(
        8,
        flag="--attribution-max-queued",
        ge=0,
        limits=("attribution_max_queued",),
        help="graphs waiting for a worker before RESOURCE_EXHAUSTED (with --redis-url: across the fleet)",
    )
    max_queued_per_tenant: int = option(
        4,
        flag="--attribution-max-queued-per-tenant",
        ge=0,
        help="of those, graphs one tenant (token name) may have waiting (with --redis-url: across the fleet)",
    )
    max_prompt_tokens: int = option(
        512,
        flag="--attribution-max-prompt-tokens",
        ge=1,
        limits=("attribution_max_prompt_tokens", "steer_max_tokens"),
        help="attribution input length (BOS included); also Steer's prompt + new tokens",
    )
    max_feature_nodes_limit: int = option(
        16384,
        flag="--attribution-max-feature-nodes",
        ge=1,
        limits=("attribution_max_feature_nodes",),
        help="largest max_feature_nodes a request may ask for",
    )
    max_batch_size: int = option(
        1024,
        flag="--attribution-max-batch-size",
        ge=1,
        limits=("attribution_max_batch_size",),
        help="largest backward batch a request may ask for",
    )
    memory_budget_bytes: int = option(
        8 * _GIB,
        flag="--attribution-memory-budget-gib",
        type=float,
        unit=_GIB,
        unit_name="GiB",
        gt=0,
        limits=("attribution_memory_budget_bytes",),
        help="peak working memory one graph may need, as the engine estimates it once the prompt's active "
        "features are known",
    )
    result_chunk_bytes: int = option(
        3 * _MIB,
        flag="--attribution-result-chunk-kib",
        type=int,
        unit=_KIB,
        unit_name="KiB",
        ge=1,
        le=MAX_RESULT_CHUNK_BYTES // _KIB,
        help="results larger than this are streamed as chunks of at most this size, so that clients with "
        "gRPC's default 4 MiB receive limit get them (attribution.proto)",
    )
    # ---- graph cache
    redis_url: str | None = option(
        None,
        flag="--redis-url",
        type=str,
        env="CIRCUIT_REDIS_URL",
        group=_CACHE,
        help="redis://host:port/db for the graph cache, locks and served completions; "
        "without it an in-process LRU is used",
    )
    redis_prefix: str = option(
        "circuit:", flag="--redis-prefix", group=_CACHE, help="every Redis key this server writes starts with it"
    )
    redis_timeout_s: float = option(
        0.5, flag="--redis-timeout", group=_CACHE, help="connect/read timeout of each Redis command, seconds"
    )
    cache_ttl_s: float = option(
        7 * 24 * 3600.0, flag="--graph-cache-ttl", group=_CACHE, help="seconds a cached graph lives"
    )
    cache_max_entry_bytes: int = option(
        64 * _MIB,
        flag="--graph-cache-max-entry-mib",
        type=float,
        unit=_MIB,
        unit_name="MiB",
        group=_CACHE,
        ge=0,
        help="larger graphs are served but not cached",
    )
    cache_compression: str = option(
        "none",
        flag="--graph-cache-compression",
        choices=("none", "zlib"),
        group=_CACHE,
        help="store cache entries as they are (a hit only slices them) or zlib-compressed "
        "(about 4x smaller, a decompression per hit) (cache/entry.py)",
    )
    memory_cache_bytes: int = option(
        512 * _MIB,
        flag="--graph-cache-memory-mib",
        type=float,
        unit=_MIB,
        unit_name="MiB",
        group=_CACHE,
        ge=0,
        help="size of the in-process cache used without Redis",
    )
    lock_ttl_s: float = 30.0  # replica lock expiry (renewed while computing)
    lock_wait_s: float = 120.0  # longest wait for another replica's graph before computing it here
    # ---- fleet job queue (jobs/fleet_queue.py, jobs/fleet_worker.py)
    job_reclaim_s: float = option(
        30.0,
        flag="--job-reclaim-after",
        gt=0,
        group=_FLEET,
        help="seconds without a heartbeat after which another replica takes over a graph (XAUTOCLAIM)",
    )
    job_heartbeat_s: float = option(
        5.0,
        flag="--job-heartbeat",
        gt=0,
        group=_FLEET,
        help="seconds between heartbeats of a computing replica (XCLAIM JUSTID); keep it well under "
        "--job-reclaim-after",
    )
    job_max_deliveries: int = option(
        3,
        flag="--job-max-deliveries",
        ge=1,
        group=_FLEET,
        help="a graph handed out this many times without finishing goes to the dead-letter stream as FAILED",
    )
    job_poll_s: float = option(
        0.2,
        flag="--job-poll",
        gt=0,
        group=_FLEET,
        help="seconds between a free worker's looks at the queue, and between progress/cancel checks",
    )
    job_ttl_s: float = option(
        24 * 3600.0, flag="--job-ttl", gt=0, group=_FLEET, help="seconds a job's status stays readable"
    )
    replica_name: str | None = option(
        None,
        flag="--replica-name",
        type=str,
        env="CIRCUIT_REPLICA_NAME",
        group=_FLEET,
        help="this replica's name in job status and metrics (default: host name and process id)",
    )
    test_exit_batch_size: int = option(
        0,
        flag="--test-exit-on-batch-size",
        ge=0,
        group=_FLEET,
        help="TESTS ONLY: a worker that takes a graph with this batch_size ends the process at once "
        "(exit status 86), as a crashing worker would; 0 (default) never",
    )
    # ---- served completions
    completions_ttl_s: float = option(
        24 * 3600.0,
        flag="--completions-ttl",
        group=_CACHE,
        help="seconds a served generation can be audited by request_id",
    )
    completions_max: int = option(
        100_000, flag="--completions-max", ge=1, group=_CACHE, help="served generations kept in memory for audits"
    )
    completions_max_bytes: int = option(  # token ids at 4 bytes + 256 a record
        256 * _MIB,
        flag="--completions-max-mib",
        type=float,
        unit=_MIB,
        unit_name="MiB",
        gt=0,
        group=_CACHE,
        help="their total size in memory",
    )
    # ---- loading
    identity_cache: Path | None = option(  # None: hash every start
        None,
        flag="--cache-dir",
        type=Path,
        help="where weight-file hashes are kept so restarts do not re-read the weights "
        "(default $CIRCUIT_CACHE_DIR, else ~/.cache/circuit-serve)",
    )
    lazy_decoders: bool = option(
        True,
        flag="--eager-decoders",
        negate=True,
        help="hold every transcoder decoder in memory instead of reading the rows a graph needs "
        "from the safetensors files",
    )

    @classmethod
    def values_from_args(cls, args) -> dict:
        values = super().values_from_args(args)
        return values | {"identity_cache": values["identity_cache"] or identity_cache_dir()}

    def check(self) -> None:
        if self.role != "all" and self.transcoders is None:
            raise OptionError("--role", f"{self.role} needs --transcoders (the graphs' model)")
        if self.role == "generation" and not self.redis_url:
            raise OptionError("--role", "generation needs --redis-url: its graphs are computed by other replicas")
        tc = self.transcoders
        if tc is not None and not tc.is_dir() and parse_repo_spec(str(tc)) is None:
            raise OptionError(
                "--transcoders",
                f"{self.transcoders} is neither a directory nor a Hugging Face "
                "repo id (org/name[/subfolder][@revision])",
            )
