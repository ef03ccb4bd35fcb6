"""Cached vs computed Attribute latency through the real server, in one run.

    .venv/bin/python bench/cache.py [--out bench/results/cache.md] [--prompt TEXT] [--cached-calls 100]

Two configurations, each served by its own `circuit-serve serve --transcoders ... --redis-url ...`
(real vLLM) against a private `redis-server`, on free ports:

1. the demo model as shipped (trained Llama, 4 layers) with its own TopK transcoders and a prompt
   in its language: small graphs that compute in tens of milliseconds;
2. the demo model's random-weight variant (2 layers) with random JumpReLU transcoders of
   1024 features per layer: graphs of several thousand features that take seconds.

In each, over gRPC:

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

TRAINED_PROMPT = ("the teacher in kouston paints the old bridge in the morning . everyone in the city likes "
                  "the market . the capital of doxmoupolis is")
RANDOM_PROMPT = (
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


def measure(model_dir: Path, tc_dir: Path, prompt: str, redis_url: str, log_path: Path, *, graphs: int,
            cached_calls: int, max_feature_nodes: int | None) -> dict:
    from circuit_client.attribution import AttributionClient, AttributionSettings

    proc, target = start_server(model_dir, tc_dir, redis_url, log_path)
    try:
        with AttributionClient(target, timeout=1800) as client:
            # one full-size graph first (another key), so first-call costs do not count as compute time
            warm = AttributionSettings(max_feature_nodes=max_feature_nodes, edge_threshold=0.5)
            n_tokens = len(client.attribute(prompt, warm).frontend()["metadata"]["prompt_tokens"])
            computed, cached, fetched, sizes = [], [], [], []
            for i in range(graphs):
                settings = AttributionSettings(max_feature_nodes=max_feature_nodes, edge_threshold=0.98 - 0.001 * i)
                t0 = time.perf_counter()
                first = client.attribute(prompt, settings)
                computed.append(time.perf_counter() - t0)
                assert first.source == "computed", first.source
                sizes.append((len(first.frontend_json), first.graph.ByteSize(), len(first.graph.nodes),
                              len(first.graph.edges.weights), first.graph.n_active_features))
                for _ in range(cached_calls // graphs):
                    t0 = time.perf_counter()
                    hit = client.attribute(prompt, settings)
                    cached.append(time.perf_counter() - t0)
                    assert hit.source == "cache" and hit.frontend_json == first.frontend_json
                for _ in range(10):
                    t0 = time.perf_counter()
                    got = client.get_graph(first.key)
                    fetched.append(time.perf_counter() - t0)
                    assert got.frontend_json == first.frontend_json
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    return dict(computed=computed, cached=cached, fetched=fetched, sizes=sizes[0], n_tokens=n_tokens)


def table(r: dict) -> list[str]:
    comp, hit, get = statistics.median(r["computed"]), statistics.median(r["cached"]), statistics.median(r["fetched"])
    p90 = sorted(r["cached"])[int(0.9 * (len(r["cached"]) - 1))]
    json_b, pb_b, nodes, edges, active = r["sizes"]
    return [
        f"Prompt of {r['n_tokens']} tokens (BOS included), {active} active features; pruned graph {nodes} nodes, "
        f"{edges} edges, protobuf {pb_b / 1024:.0f} KiB, frontend JSON {json_b / 1024:.0f} KiB (both returned "
        "on every call).",
        "",
        "| measurement | calls | median | |",
        "|---|---:|---:|---|",
        f"| computed (cache miss, engine runs) | {len(r['computed'])} | {comp * 1e3:.1f} ms | "
        f"{', '.join(f'{c * 1e3:.0f}' for c in r['computed'])} ms |",
        f"| cached (Redis hit, identical bytes) | {len(r['cached'])} | {hit * 1e3:.2f} ms | p90 {p90 * 1e3:.2f} ms |",
        f"| GetGraph(key) | {len(r['fetched'])} | {get * 1e3:.2f} ms | |",
        "",
        f"**Ratio computed / cached: {comp / hit:,.0f}x**",
        "",
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cache.md")
    ap.add_argument("--computed-graphs", type=int, default=3)
    ap.add_argument("--cached-calls", type=int, default=99)
    ap.add_argument("--d-transcoder", type=int, default=1024)
    args = ap.parse_args()

    from circuit_serve.demo import build_demo_model
    from support.redis_server import RedisServer
    from support.transcoders import write_random_transcoders

    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp, RedisServer() as redis:
        tmp = Path(tmp)
        trained = build_demo_model(tmp / "trained")
        shipped = measure(trained, trained / "transcoders", TRAINED_PROMPT, redis.url, tmp / "server1.log",
                          graphs=args.computed_graphs, cached_calls=args.cached_calls, max_feature_nodes=None)
        random_dir = build_demo_model(tmp / "random", random_weights=True, seed=0)
        tc_dir = write_random_transcoders(random_dir, tmp / "random-tc", d_transcoder=args.d_transcoder, seed=0)
        heavy = measure(random_dir, tc_dir, RANDOM_PROMPT, redis.url, tmp / "server2.log",
                        graphs=args.computed_graphs, cached_calls=args.cached_calls, max_feature_nodes=None)

    load = os.getloadavg()
    lines = [
        "# Graph cache: cached vs computed Attribute latency",
        "",
        f"Run by `bench/cache.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
        f"{platform.machine()}, {os.cpu_count()} CPUs (shared with other work: load average at the end "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}), Python {platform.python_version()}; "
        "real server (vLLM CPU build loaded alongside), private redis-server, client over gRPC on 127.0.0.1; "
        "settings default (max_feature_nodes = the server's limit, so every active feature).",
        "",
        "## 1. Demo model as shipped (trained Llama 4x128, its TopK k=4 transcoders)",
        "",
        *table(shipped),
        f"## 2. Random-weight demo model (Llama 2x128) with random JumpReLU transcoders ({args.d_transcoder} per layer)",
        "",
        *table(heavy),
        "Target: at least 1000x. A cache hit costs a gRPC round trip, a Redis GET, decompression and the",
        "response (a few ms), so the ratio is the graph's compute time over that. Compute time on these",
        "2 shared CPUs swings with the machine's load: the shipped demo model's graphs (a few hundred",
        "active features) have been seen to take from about 50 ms (an idle moment; ratio about 30x) to",
        "seconds, so its ratio here says more about the load than the cache. Graphs of thousands of",
        "features (configuration 2, and any real model) clear the target at any load seen.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
