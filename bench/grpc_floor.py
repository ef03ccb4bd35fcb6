"""How much of a GenerateStream's CPU is gRPC's own, in one run on one machine:

- raw: vLLM's `AsyncLLM` in this process (its front end: input and output processing, detokenizing);
- ours: this server's `GenerateStream`, the same model and engine settings;
- bare: a bare `grpc.aio` server (uvloop, no engine, no interceptors) that writes the same messages
  (one delta a token, then the end message) at ours' pace: every stream one message each `tick`,
  the time a token took per stream in ours' second warm-up round.

    .venv/bin/python bench/grpc_floor.py                  # demo model, 64x32 and 16x128, 5 rounds
    .venv/bin/python bench/grpc_floor.py --workloads 8x8 --repeats 1   # a smoke run

The same client (`circuit_client.AsyncCircuitClient`) reads ours and bare. Per round: the serving
process's CPU (its threads, not vLLM's engine core and worker) and this process's (the clients, and
the raw engine's front end), per generated token and per message. Placed like bench/front_doors.py
(the worker and its engine core on `--worker-core`, the servers' serving processes and this process
on the other cores). Writes bench/results/grpc_floor.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from front_doors import ENGINE, ENV, PROMPTS, workload  # bench/ is on the path: the script's directory
from generation import process_cpu, self_cpu

from circuit_serve.launch import free_port, start_server, stop_on_sigterm

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "grpc_floor.md"
RID = "gen-0123456789abcdef0123456789abcdef"  # as long as the server's request ids
LABELS = {"raw": "raw AsyncLLM (in-process)", "ours": "circuit-serve GenerateStream", "bare": "bare grpc.aio server"}


@dataclass
class Path_:
    rates: list[float] = field(default_factory=list)
    server_us: list[float] = field(default_factory=list)  # serving-process CPU per token
    client_us: list[float] = field(default_factory=list)  # this process's CPU per token
    tokens: int = 0
    messages: int = 0


# ---- the bare server (a subprocess: `--serve-bare PORT --tick S`) ----------------------------------


async def serve_bare(port: int, tick: float) -> None:
    import grpc

    from circuit_proto.v1 import generation_pb2 as pb
    from circuit_proto.v1 import generation_pb2_grpc as pb_grpc

    clock = asyncio.Event()  # set once a tick: every stream writes its next message

    async def ticker() -> None:
        while True:
            await asyncio.sleep(tick)
            clock.set()
            clock.clear()

    class Bare(pb_grpc.GenerationServicer):
        async def GenerateStream(self, request, context):
            n = request.sampling.max_new_tokens
            for i in range(n):
                await clock.wait()
                message = pb.GenerateStreamResponse()
                message.request_id = RID
                message.delta.text = " x"
                message.delta.token_ids.append(100 + i)
                await context.write(message)
            end = pb.GenerateStreamResponse(request_id=RID)
            end.end.finish_reason = pb.FINISH_REASON_LENGTH
            end.end.usage.prompt_tokens, end.end.usage.completion_tokens = 8, n
            await context.write(end)

    server = grpc.aio.server()
    pb_grpc.add_GenerationServicer_to_server(Bare(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    task = asyncio.create_task(ticker())
    print("serving", flush=True)
    await server.wait_for_termination()
    task.cancel()


def start_bare(tick: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve-bare", str(port), "--tick", repr(tick)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    if proc.stdout.readline().strip() != "serving":
        raise RuntimeError("the bare server did not start")
    return proc, f"127.0.0.1:{port}"


# ---- the run ------------------------------------------------------------------------------------


async def run(model: Path, args) -> list[tuple]:
    from monitoring import placement
    from vllm import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    from circuit_serve.config.serve import ServeConfig, cpu_list
    from circuit_serve.generation.placement import place_engine_core

    parser = argparse.ArgumentParser()
    ServeConfig.add_arguments(parser)
    config = ServeConfig.from_args(parser.parse_args(["--model", str(model), *ENGINE, "--kv-cache-gib", "1"]))
    rows: list[tuple] = []
    ours = engine = None
    try:
        ours = start_server(
            model, [*ENGINE, "--kv-cache-gib", "1", "--log-level", "WARNING", *placement(args)], env=ENV
        )
        engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**config.engine.engine_kwargs()))
        if args.worker_core:
            place_engine_core(engine, cpu_list(args.worker_core))
        for streams, tokens in args.workloads:
            rows += await measure(streams, tokens, engine, ours, args)
    finally:
        if engine is not None:
            engine.shutdown()
        if ours is not None:
            ours.stop()
    return rows


async def measure(streams: int, tokens: int, engine, ours, args) -> list[tuple]:
    """One workload's rounds: raw, ours and bare alternating (bare started at ours' warm-up pace)."""
    from monitoring import ENGINE_IDLE_S, frontends_placed
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    from circuit_client import AsyncCircuitClient, Sampling

    texts = [f"{PROMPTS[i % len(PROMPTS)]} {i}" for i in range(streams)]
    ids = [engine.get_tokenizer().encode(t) for t in texts]
    params = SamplingParams(max_tokens=tokens, temperature=0.8, ignore_eos=True, output_kind=RequestOutputKind.DELTA)
    sampling = Sampling(max_new_tokens=tokens, temperature=0.8, ignore_eos=True)
    stats = {k: Path_() for k in LABELS}
    run_id = [0]

    async def raw_one(i: int) -> int:
        n = 0
        async for _ in engine.generate({"prompt_token_ids": ids[i]}, params, request_id=f"{run_id[0]}-{i}"):
            n += 1
        return n

    def grpc_one(client):
        async def one(i: int) -> int:
            n = 0
            async for chunk in client.stream(texts[i], sampling):
                n += 1 if chunk.token_ids else 0
            return n

        return one

    async def timed(one, pid: int | None) -> tuple[float, float, float, int]:
        """Wall seconds, the serving process's and this process's CPU seconds, and messages with tokens."""
        await asyncio.sleep(ENGINE_IDLE_S)  # the previous path's engine stops spinning first
        run_id[0] += 1
        s0, c0, t0 = process_cpu(pid) if pid else 0.0, self_cpu(), time.perf_counter()
        counts = await asyncio.gather(*(one(i) for i in range(streams)))
        wall = time.perf_counter() - t0
        s1 = process_cpu(pid) if pid else 0.0
        return wall, s1 - s0, self_cpu() - c0, sum(counts)

    bare = None
    try:
        with frontends_placed(args, ours.pid):
            async with AsyncCircuitClient(ours.target, timeout=600) as client:
                await timed(grpc_one(client), ours.pid)  # warm-ups; ours' second sets the bare server's tick
                await timed(raw_one, None)
                warm = await timed(grpc_one(client), ours.pid)
                tick = warm[0] / tokens
                bare, bare_target = start_bare(tick)  # started from here: on this process's cores
                async with AsyncCircuitClient(bare_target, timeout=600) as bare_client:
                    paths = {
                        "raw": (raw_one, None),
                        "ours": (grpc_one(client), ours.pid),
                        "bare": (grpc_one(bare_client), bare.pid),
                    }
                    await timed(*paths["bare"])  # its warm-up
                    for rep in range(args.repeats):
                        for k in list(paths) if rep % 2 == 0 else list(reversed(paths)):
                            wall, server, mine, messages = await timed(*paths[k])
                            st, n = stats[k], streams * tokens
                            st.rates.append(n / wall)
                            st.server_us.append(1e6 * server / n)
                            st.client_us.append(1e6 * mine / n)
                            st.tokens += n
                            st.messages += messages
                        print(
                            f"{streams}x{tokens} round {rep}: "
                            + ", ".join(f"{k} {stats[k].rates[-1]:,.0f} tok/s" for k in paths),
                            flush=True,
                        )
    finally:
        if bare is not None:
            bare.terminate()
            bare.wait(30)
    return [(f"{streams}x{tokens}", k, stats[k], tick) for k in LABELS]


def write(rows: list[tuple], args) -> None:
    med = statistics.median
    lines = [
        "# gRPC's own cost in a GenerateStream: this server, a bare grpc.aio server, the raw engine",
        "",
        f"`bench/grpc_floor.py`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, demo model, vLLM CPU "
        f"build, float32, eager; streams x tokens with ignore_eos, temperature 0.8; {args.repeats} rounds after "
        "warm-ups, paths alternating. The bare server writes one delta per stream every tick (the time a token "
        "took per stream in ours' second warm-up round), then the end message; the same client reads both servers. "
        "CPU in microseconds per generated token, medians over rounds (min-max): the serving process's own "
        "threads, and this benchmark's process (the clients; for raw, the engine's front end). Clock ticks are "
        f"{1e6 / os.sysconf('SC_CLK_TCK'):,.0f} us, so a round's figure is good to about that over its tokens. "
        "Command: `" + " ".join(sys.argv) + "`.",
        "",
        "| workload | path | tokens/s (min-max) | tok/msg | tick ms | serving CPU us/token | client CPU us/token |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]

    def spread(xs: list[float]) -> str:
        return f"{med(xs):,.0f} ({min(xs):,.0f}-{max(xs):,.0f})"

    for work, k, st, tick in rows:
        if not st.rates:
            continue
        serving = spread(st.server_us) if k != "raw" else "(in the client's process)"
        lines.append(
            f"| {work} | {LABELS[k]} | {spread(st.rates)} | {st.tokens / max(st.messages, 1):.2f} "
            f"| {1e3 * tick:.2f} | {serving} | {spread(st.client_us)} |"
        )
    RESULTS.write_text("\n".join(lines) + "\n")
    print(RESULTS.read_text())


def main() -> int:
    from monitoring import add_load_args, server_environment

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", type=workload, default=[(64, 32), (16, 128)])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--serve-bare", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tick", type=float, help=argparse.SUPPRESS)

    add_load_args(parser, workload=False)
    args = parser.parse_args()
    if args.serve_bare:
        import uvloop

        uvloop.run(serve_bare(args.serve_bare, args.tick))
        return 0
    stop_on_sigterm()
    os.environ.update(ENV)
    server_environment(args)
    from circuit_serve.demo import build_demo_model

    with tempfile.TemporaryDirectory(prefix="grpc-floor-") as tmp:
        model = build_demo_model(Path(tmp) / "demo", arch="llama", seed=0)
        rows = asyncio.run(run(Path(model), args))
    write(rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
