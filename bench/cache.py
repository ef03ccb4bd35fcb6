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

3. Issue 10's random model (circuit_serve/demo/large_graph_model.py: Llama 6 layers, d_model 256, 8 heads,
   MLP 1024; 2,048-feature transcoders firing about 5% of the time), whose two graphs (a 7-token
   prompt with default settings; a 71-token prompt with max_feature_nodes 2,000) come back as
   results of 8-10 MB, above gRPC's default 4 MiB message limit. Clients use channels with gRPC's
   default options, so every result arrives in chunks. For each graph, interleaved in one run:
   - a raw Redis GET of the entry the server stored (redis.asyncio, as the server reads it);
   - a cached Attribute through the server, reassembled and parsed by the client library;
   - GetGraphStream of the same key.
   Once with entries stored as they are (the default) and once zlib-compressed
   (--graph-cache-compression zlib; the same entries re-encoded, so nothing is recomputed).
   Target: a cached hit at most 3x the raw GET of the same entry.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from circuit_serve.launch import LaunchedServer, start_server, stop_on_sigterm

ROOT = Path(__file__).resolve().parent.parent

TRAINED_PROMPT = (
    "the teacher in kouston paints the old bridge in the morning . everyone in the city likes "
    "the market . the capital of doxmoupolis is"
)
RANDOM_PROMPT = (
    "Paris is the capital of France. Berlin is the capital of Germany. Rome is the capital of Italy. "
    "Madrid is the capital of Spain. Vienna is the capital of"
)
ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_LOGGING_LEVEL": "WARNING",
    "TOKENIZERS_PARALLELISM": "false",
}


def start_cache_server(model_dir: Path, tc_dir: Path, redis_url: str, log_path: Path, *flags: str) -> LaunchedServer:
    """The server of this benchmark: CPU settings, `tc_dir` and `redis_url`, `flags`; SERVING within 600 s."""
    return start_server(
        model_dir,
        [
            "--dtype",
            "float32",
            "--max-model-len",
            "512",
            "--enforce-eager",
            "--kv-cache-gib",
            "1",
            "--transcoders",
            str(tc_dir),
            "--redis-url",
            redis_url,
            *flags,
        ],
        log_path=log_path,
        env=ENV,
        timeout_s=600,
    )


def measure(
    model_dir: Path,
    tc_dir: Path,
    prompt: str,
    redis_url: str,
    log_path: Path,
    *,
    graphs: int,
    cached_calls: int,
    max_feature_nodes: int | None,
) -> dict:
    from circuit_client.attribution import AttributionClient, AttributionSettings

    server = start_cache_server(model_dir, tc_dir, redis_url, log_path)
    target = server.target
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
                sizes.append(
                    (
                        len(first.frontend_json),
                        first.graph.ByteSize(),
                        len(first.graph.nodes),
                        len(first.graph.edges.weights),
                        first.graph.n_active_features,
                    )
                )
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
        server.stop()
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


def time_hits(
    target: str, redis_url: str, prefix: str, graphs: list[tuple[str, object, str]], calls: int
) -> list[dict]:
    """Per graph: raw GETs of its stored entry, cached Attributes and GetGraphStreams, interleaved."""
    import asyncio

    import grpc
    import redis.asyncio as aioredis

    from circuit_client.attribution import AttributionClient

    loop = asyncio.new_event_loop()
    r = aioredis.Redis.from_url(redis_url)
    out = []
    with grpc.insecure_channel(target) as channel:  # gRPC's default options: 4 MiB receive limit
        client = AttributionClient(channel, retries=0, timeout=600)
        for prompt, settings, key in graphs:
            name = f"{prefix}graph:{key}"
            gets, hits, streams, entry_bytes, result_bytes = [], [], [], 0, 0
            for _ in range(calls):
                t0 = time.perf_counter()
                blob = loop.run_until_complete(r.get(name))
                gets.append(time.perf_counter() - t0)
                entry_bytes = len(blob)
                t0 = time.perf_counter()
                hit = client.attribute(prompt, settings)
                hits.append(time.perf_counter() - t0)
                assert hit.source == "cache", hit.source
                result_bytes = hit.graph.ByteSize() + len(hit.frontend_json)
                t0 = time.perf_counter()
                client.get_graph(key)
                streams.append(time.perf_counter() - t0)
            out.append(dict(get=gets, hit=hits, stream=streams, entry_bytes=entry_bytes, result_bytes=result_bytes))
    loop.run_until_complete(r.aclose())
    loop.close()
    return out


def measure_large(tmp: Path, redis_url: str, calls: int) -> dict:
    """Section 3: compute issue 10's two graphs, then time hits against raw GETs, stored and zlib."""
    import asyncio

    import redis.asyncio as aioredis

    from circuit_client.attribution import AttributionClient, AttributionSettings
    from circuit_serve.cache import entry
    from circuit_serve.demo.large_graph_model import GRAPHS, build_large_graph_model
    from circuit_serve.rpc.convert_attribution import GRAPH_FORMAT

    model_dir, tc_dir = build_large_graph_model(tmp / "large")
    # a 5 s Redis timeout (default 0.5 s): a load spike on the shared machine must not turn a hit into a miss
    flags = ["--attribution-max-prompt-tokens", "128", "--redis-timeout", "5"]
    server = start_cache_server(model_dir, tc_dir, redis_url, tmp / "server3.log", "--redis-prefix", "bench3:", *flags)
    target = server.target
    graphs, computed, shapes = [], [], []
    try:
        import grpc

        with grpc.insecure_channel(target) as channel:
            client = AttributionClient(channel, retries=0, timeout=1800)
            for prompt, mfn in GRAPHS:
                settings = AttributionSettings(max_feature_nodes=mfn)
                t0 = time.perf_counter()
                first = client.attribute(prompt, settings)
                computed.append(time.perf_counter() - t0)
                assert first.source == "computed", first.source
                graphs.append((prompt, settings, first.key))
                g = first.graph
                shapes.append(
                    dict(
                        tokens=len(g.input_tokens),
                        mfn=mfn,
                        active=g.n_active_features,
                        nodes=len(g.nodes),
                        edges=len(g.edges.weights),
                        pb=g.ByteSize(),
                        json=len(first.frontend_json),
                    )
                )
        stored = time_hits(target, redis_url, "bench3:", graphs, calls)
    except Exception:
        print((tmp / "server3.log").read_text(errors="replace")[-4000:], file=sys.stderr)
        raise
    finally:
        server.stop()

    async def recode() -> None:  # the same entries, zlib-compressed, where the second server looks
        r = aioredis.Redis.from_url(redis_url)
        for _, _, key in graphs:
            sections = entry.decode(key, await r.get(f"bench3:graph:{key}"), graph_format=GRAPH_FORMAT)
            blob = entry.encode(key, sections, graph_format=GRAPH_FORMAT, codec=entry.Codec.ZLIB)
            await r.set(f"bench3z:graph:{key}", blob, px=3_600_000)
        await r.aclose()

    asyncio.run(recode())
    server = start_cache_server(
        model_dir,
        tc_dir,
        redis_url,
        tmp / "server4.log",
        "--redis-prefix",
        "bench3z:",
        "--graph-cache-compression",
        "zlib",
        *flags,
    )
    target = server.target
    try:
        zlibbed = time_hits(target, redis_url, "bench3z:", graphs, calls)
    except Exception:
        print((tmp / "server4.log").read_text(errors="replace")[-4000:], file=sys.stderr)
        raise
    finally:
        server.stop()
    return dict(shapes=shapes, computed=computed, stored=stored, zlib=zlibbed)


def large_table(r: dict) -> list[str]:
    med = statistics.median
    lines = []
    for i, shape in enumerate(r["shapes"]):
        mfn = "default settings" if shape["mfn"] is None else f"max_feature_nodes {shape['mfn']:,}"
        lines += [
            f"**Graph {i + 1}: {shape['tokens']}-token prompt, {mfn}.** {shape['active']:,} active features; "
            f"pruned graph {shape['nodes']:,} nodes, {shape['edges']:,} edges; result "
            f"{(shape['pb'] + shape['json']) / 1e6:.1f} MB (protobuf graph {shape['pb'] / 1e6:.2f} MB, frontend JSON "
            f"{shape['json'] / 1e6:.2f} MB), sent as {-(-(shape['pb'] + shape['json']) // (3 << 20))} chunks of at "
            f"most 3 MiB. Computed in {r['computed'][i]:.1f} s.",
            "",
            "| entry stored | entry size | raw Redis GET | cached Attribute | hit / GET | GetGraphStream | stream / GET |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for label, runs in (("as is (default)", r["stored"]), ("zlib", r["zlib"])):
            m = runs[i]
            get, hit, stream = med(m["get"]), med(m["hit"]), med(m["stream"])
            lines.append(
                f"| {label} | {m['entry_bytes'] / 1e6:.2f} MB | {get * 1e3:.1f} ms | {hit * 1e3:.1f} ms | "
                f"**{hit / get:.2f}x** | {stream * 1e3:.1f} ms | {stream / get:.2f}x |"
            )
        lines.append("")
    return lines


def main() -> int:
    stop_on_sigterm()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cache.md")
    ap.add_argument("--computed-graphs", type=int, default=3)
    ap.add_argument("--cached-calls", type=int, default=99)
    ap.add_argument("--d-transcoder", type=int, default=1024)
    ap.add_argument("--hit-calls", type=int, default=15, help="timed hits (and GETs) per large graph and codec")
    ap.add_argument("--skip-demo", action="store_true", help="run section 3 only (for trying changes out)")
    args = ap.parse_args()

    from circuit_serve.demo import build_demo_model
    from circuit_serve.demo.random_transcoders import write_random_transcoders
    from circuit_serve.testing.redis_server import RedisServer

    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp, RedisServer() as redis:
        tmp = Path(tmp)
        if not args.skip_demo:
            trained = build_demo_model(tmp / "trained")
            shipped = measure(
                trained,
                trained / "transcoders",
                TRAINED_PROMPT,
                redis.url,
                tmp / "server1.log",
                graphs=args.computed_graphs,
                cached_calls=args.cached_calls,
                max_feature_nodes=None,
            )
            random_dir = build_demo_model(tmp / "random", random_weights=True, seed=0)
            tc_dir = write_random_transcoders(random_dir, tmp / "random-tc", d_transcoder=args.d_transcoder, seed=0)
            heavy = measure(
                random_dir,
                tc_dir,
                RANDOM_PROMPT,
                redis.url,
                tmp / "server2.log",
                graphs=args.computed_graphs,
                cached_calls=args.cached_calls,
                max_feature_nodes=None,
            )
        large = measure_large(tmp, redis.url, args.hit_calls)

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
    ]
    if not args.skip_demo:
        lines += [
            "## 1. Demo model as shipped (trained Llama 4x128, its TopK k=4 transcoders)",
            "",
            *table(shipped),
            f"## 2. Random-weight demo model (Llama 2x128) with random JumpReLU transcoders ({args.d_transcoder} "
            "per layer)",
            "",
            *table(heavy),
            "Target: at least 1000x. A cache hit costs a gRPC round trip, a Redis GET and the response (a few",
            "ms), so the ratio is the graph's compute time over that. Compute time on these 2 shared CPUs",
            "swings with the machine's load: the shipped demo model's graphs (a few hundred active features)",
            "have been seen to take from about 50 ms (an idle moment; ratio about 30x) to seconds, so its ratio",
            "here says more about the load than the cache. Graphs of thousands of features (configuration 2,",
            "and any real model) clear the target at any load seen.",
            "",
        ]
    lines += [
        "## 3. Results above gRPC's 4 MiB default: a cache hit against a raw Redis GET of the same entry",
        "",
        "Issue 10's random model: Llama 6 layers, d_model 256, 8 heads, MLP 1024, random JumpReLU transcoders",
        "of 2,048 features per layer firing on about 5% of (layer, position) pairs (circuit_serve/demo/large_graph_model.py).",
        "Clients use channels with gRPC's default options (4 MiB receive limit), so each result comes as",
        "chunks that the client library reassembles (checking length and CRC-32) and parses. Per graph,",
        f"{args.hit_calls} rounds of: a raw GET of the stored entry from the bench process (redis.asyncio,",
        "the client the server reads with), a cached Attribute (client-observed: call, chunks, reassembly,",
        "parse), a GetGraphStream of the same key; medians. Second row: a server started with",
        "`--graph-cache-compression zlib` over the same entries re-encoded. Both servers run with",
        "`--redis-timeout 5` (default 0.5 s) so that a load spike on this shared machine cannot turn a hit",
        "into a miss.",
        "",
        *large_table(large),
        "Target: a cached hit at most 3x the raw GET of the same entry (entries stored as they are, the default).",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
