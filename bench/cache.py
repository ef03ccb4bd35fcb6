"""Cached vs computed Attribute latency through the real server, in one run.

    .venv/bin/python bench/cache.py [--out bench/results/cache.md] [--prompt TEXT] [--cached-calls 100]

Builds the demo model and random JumpReLU transcoders in a temporary directory,
starts a private `redis-server` and `circuit-serve serve --transcoders ... --redis-url ...`
(real vLLM) on free ports, then times over gRPC:

- computed: the first Attribute of a graph (cache miss; the engine computes it), for a
  few graphs of the same shape and cost (they differ only in edge_threshold, so in key);
- cached: the same Attribute again (a Redis hit returning the identical bytes), many times;
- GetGraph of the same key.

Writes the medians and the ratio computed / cached to the results file (target >= 1000x).
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

PROMPT = (
    "Paris is the capital of France. Berlin is the capital of Germany. Rome is the capital of Italy. "
    "Madrid is the capital of Spain. Vienna is the capital of"
)
ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_LOGGING_LEVEL": "WARNING",
       "TOKENIZERS_PARALLELISM": "false"}


def start_server(model_dir: Path, tc_dir: Path, redis_url: str, log_path: Path):
    from circuit_client import CircuitClient, CircuitRpcError
    from support.redis_server import free_port

    port = free_port()
    cmd = [sys.executable, "-m", "circuit_serve.cli", "serve", "--model", str(model_dir), "--host", "127.0.0.1",
           "--port", str(port), "--metrics-port", "0", "--dtype", "float32", "--max-model-len", "512",
           "--enforce-eager", "--kv-cache-gib", "1", "--transcoders", str(tc_dir), "--redis-url", redis_url]
    proc = subprocess.Popen(cmd, stdout=log_path.open("wb"), stderr=subprocess.STDOUT, env={**os.environ, **ENV},
                            start_new_session=True)
    target = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    with CircuitClient(target, timeout=2, retries=0) as client:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{log_path.read_text()[-3000:]}")
            try:
                if client.health() == "SERVING":
                    return proc, target
            except CircuitRpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("server did not start")
            time.sleep(0.5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cache.md")
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--computed-graphs", type=int, default=3)
    ap.add_argument("--cached-calls", type=int, default=100)
    ap.add_argument("--d-transcoder", type=int, default=1024)
    ap.add_argument("--max-feature-nodes", type=int, default=None, help="default: the server's limit")
    args = ap.parse_args()

    from circuit_client.attribution import AttributionClient, AttributionSettings
    from circuit_serve.demo import build_demo_model
    from support.redis_server import RedisServer
    from support.transcoders import write_random_transcoders

    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp, RedisServer() as redis:
        tmp = Path(tmp)
        model_dir = build_demo_model(tmp / "model", arch="llama", seed=0)
        tc_dir = write_random_transcoders(model_dir, tmp / "transcoders", d_transcoder=args.d_transcoder, seed=0)
        proc, target = start_server(model_dir, tc_dir, redis.url, tmp / "server.log")
        try:
            with AttributionClient(target, timeout=1800) as client:
                warm = AttributionSettings(max_feature_nodes=16, batch_size=16)
                client.attribute(args.prompt, warm)  # first-call costs (imports, allocator) out of the way
                computed, cached, fetched, sizes = [], [], [], []
                key = None
                for i in range(args.computed_graphs):
                    settings = AttributionSettings(max_feature_nodes=args.max_feature_nodes,
                                                   edge_threshold=0.98 - 0.001 * i)
                    t0 = time.perf_counter()
                    first = client.attribute(args.prompt, settings)
                    computed.append(time.perf_counter() - t0)
                    assert first.source == "computed", first.source
                    sizes.append((len(first.frontend_json), first.graph.ByteSize(), len(first.graph.nodes),
                                  len(first.graph.edges.weights)))
                    for _ in range(args.cached_calls // args.computed_graphs):
                        t0 = time.perf_counter()
                        hit = client.attribute(args.prompt, settings)
                        cached.append(time.perf_counter() - t0)
                        assert hit.source == "cache" and hit.frontend_json == first.frontend_json
                    for _ in range(10):
                        t0 = time.perf_counter()
                        got = client.get_graph(first.key)
                        fetched.append(time.perf_counter() - t0)
                        assert got.frontend_json == first.frontend_json
                    key = first.key
                n_tokens = len(next(client.stream(args.prompt, warm)).token_ids)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()

    comp, hit, get = statistics.median(computed), statistics.median(cached), statistics.median(fetched)
    ratio = comp / hit
    p90 = sorted(cached)[int(0.9 * (len(cached) - 1))]
    json_b, pb_b, nodes, edges = sizes[0]
    lines = [
        "# Graph cache: cached vs computed Attribute latency",
        "",
        f"Run by `bench/cache.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        "real server (vLLM CPU build loaded alongside), private redis-server, client over gRPC on 127.0.0.1.",
        "",
        f"Model: demo model (Llama, 2 layers, d_model 128) with random JumpReLU transcoders "
        f"({args.d_transcoder} features per layer), prompt of {n_tokens} tokens (BOS included), "
        f"max_feature_nodes {args.max_feature_nodes or 'server limit'}, other settings default; "
        f"pruned graph: {nodes} nodes, {edges} edges, protobuf {pb_b / 1024:.0f} KiB, frontend JSON "
        f"{json_b / 1024:.0f} KiB (both returned on every call).",
        "",
        "| measurement | calls | median | |",
        "|---|---:|---:|---|",
        f"| computed (cache miss, engine runs) | {len(computed)} | {comp * 1e3:.1f} ms | "
        f"{', '.join(f'{c * 1e3:.0f}' for c in computed)} ms |",
        f"| cached (Redis hit, identical bytes) | {len(cached)} | {hit * 1e3:.2f} ms | p90 {p90 * 1e3:.2f} ms |",
        f"| GetGraph(key) | {len(fetched)} | {get * 1e3:.2f} ms | |",
        "",
        f"**Ratio computed / cached: {ratio:,.0f}x** (target: at least 1000x).",
        "",
        f"Last key: `{key}`.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
