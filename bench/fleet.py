"""Benchmark: graphs per minute with 1, 2 and 3 attribution-only replicas sharing one Redis.

    .venv/bin/python bench/fleet.py [--graphs 60] [--clients 12] [--out bench/results/fleet.md]

1. Build the demo model (trained, with its transcoders) and start a private Redis.
2. For n = 1, 2, 3: start n `--role attribution` replicas (one worker each) under a fresh key
   prefix, so nothing is cached; submit `--graphs` different prompts through the first replica
   from `--clients` concurrent callers; time from the first submit to the last graph.
3. Run n = 1 once more at the end (the first run pays the cold page cache and torch start-up).
   Write graphs per minute, the computations each replica made, the machine's cores and load
   average to --out. On a machine with fewer cores than replicas the replicas share the cores,
   so the scaling measures the queue's overhead, not a speed-up.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from circuit_client.attribution import AttributionClient, AttributionSettings
from circuit_serve.demo import build_demo_model
from circuit_serve.launch import start_server, stop_on_sigterm
from circuit_serve.testing.redis_server import RedisServer

SETTINGS = AttributionSettings(max_feature_nodes=64, max_n_logits=4, batch_size=64)
ENV = {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def computations(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("circuit_attribution_computations_total "):
                return float(line.split()[-1])
    return 0.0


def run(model: Path, redis_url: str, replicas: int, graphs: int, clients: int, logs: Path) -> dict:
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    servers = [
        start_server(
            model,
            [
                "--role",
                "attribution",
                "--transcoders",
                str(model / "transcoders"),
                "--redis-url",
                redis_url,
                "--redis-prefix",
                prefix,
                "--replica-name",
                f"r{i}",
                "--attribution-max-queued",
                str(graphs + 8),
                "--job-poll",
                "0.05",
                "--dtype",
                "float32",
            ],
            log_path=logs / f"n{replicas}-r{i}.log",
            metrics=True,
            env=ENV,
            timeout_s=600,
        )  # fmt: skip
        for i in range(replicas)
    ]
    try:
        inputs = [[10 + i % 40, 60 + (i // 40) % 40, 100, 101] for i in range(graphs)]  # distinct token ids
        with AttributionClient(servers[0].target, timeout=600) as client:
            client.attribute(prompt_token_ids=[5, 6, 7], settings=SETTINGS)  # the first graph's one-time costs
            base = [computations(s.metrics_port) for s in servers]
            t0 = time.monotonic()
            with ThreadPoolExecutor(clients) as pool:
                list(pool.map(lambda t: client.attribute(prompt_token_ids=t, settings=SETTINGS, output="json"), inputs))
            seconds = time.monotonic() - t0
        per_replica = [computations(s.metrics_port) - b for s, b in zip(servers, base, strict=True)]
    finally:
        for s in servers:
            s.stop(grace_s=10)
    return {"replicas": replicas, "seconds": seconds, "per_minute": 60 * graphs / seconds, "per_replica": per_replica}


def main() -> int:
    stop_on_sigterm()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--graphs", type=int, default=60)
    ap.add_argument("--clients", type=int, default=12)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fleet.md")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    model = build_demo_model(work / "model")
    rows = []
    with RedisServer() as redis:
        for n in (1, 2, 3, 1):  # 1 again last: the first run also warms the page cache and torch
            rows.append(run(model, redis.url, n, args.graphs, args.clients, work))
            print(rows[-1], flush=True)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    lines = [
        "# Fleet: graphs per minute with 1, 2 and 3 attribution replicas",
        "",
        f"Command: `.venv/bin/python bench/fleet.py --graphs {args.graphs} --clients {args.clients}`, one run.",
        f"Demo model (trained, with its transcoders), settings {SETTINGS}; {args.graphs} different inputs",
        "submitted through the first replica; each replica is `--role attribution` with one worker and",
        "OMP_NUM_THREADS=1, on one shared Redis.",
        "",
        f"Machine: {os.cpu_count()} cores shared by every replica (and by other engineers' work: this is a",
        "shared development machine); `uptime` after the run: " + f"`{load}`.",
        "With more replicas than cores, the replicas share the cores: the numbers measure the queue's",
        "overhead and the spread of work, not a speed-up (rerun on a machine with a core per replica).",
        "The 1-replica configuration runs first and again last: the first run pays cold costs (the",
        "transcoder rows read lazily from disk into the page cache, torch's first kernels); the last",
        "is the one to compare.",
        "",
        "| attribution replicas | seconds | graphs per minute | graphs computed by each replica |",
        "|---:|---:|---:|---|",
    ]
    for r in rows:
        each = ", ".join(f"{int(c)}" for c in r["per_replica"])
        lines.append(f"| {r['replicas']} | {r['seconds']:.1f} | {r['per_minute']:.0f} | {each} |")
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
