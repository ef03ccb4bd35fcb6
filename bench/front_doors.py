"""Both front doors against their baselines, in one run on one machine:

- HTTP: this server's OpenAI front door (`--http-port`) vs vLLM's own OpenAI server
  (`python -m vllm.entrypoints.openai.api_server`, the same model and engine settings), both driven
  by one aiohttp client reading the server-sent events of streaming completions (the official
  `openai` SDK's asyncio client, used before, sent some requests' bodies up to seconds after their
  headers on this 2-core machine, in bursts of 64, whichever server it called; `tests/http_front_door`
  runs the SDK itself against this server);
- gRPC: this server's `GenerateStream` vs the raw `AsyncLLM` in this process.

    .venv/bin/python bench/front_doors.py                          # demo + wide, 16x128 and 64x32
    .venv/bin/python bench/front_doors.py --models demo --workloads 4x8 --repeats 1   # a smoke run

Each workload (streams x tokens, ignore_eos, temperature 0.8) runs warm-up, then `--repeats` timed
rounds alternating the paths (raw, gRPC, vLLM HTTP, our HTTP, then reversed), so every path sees the
same background load. Reported per path: median tokens/s, the ratio to its baseline (median of the
per-round ratios), time to first token and inter-token latency percentiles (over every stream of every
round; ITL is the gap between successive streamed messages). Writes bench/results/front_doors.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from circuit_serve.launch import free_port, start_server, stop_on_sigterm

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "front_doors.md"
FAILURES: list[str] = []  # rounds a path did not finish (timed out after --round-timeout or failed)
LOADS: list[float] = []  # the 1-minute load average after each timed round
PROMPTS = ["The capital of France is", "One, two, three,", "A transcoder reads", "Michael Jordan played"]
ENGINE = ["--dtype", "float32", "--max-model-len", "512", "--enforce-eager"]
ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING", "TOKENIZERS_PARALLELISM": "false"}


@dataclass
class Path_:
    rates: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    messages: int = 0  # streamed messages (SSE events with text, gRPC deltas, raw engine outputs)
    tokens: int = 0


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1e3 if xs else float("nan")


class Stream:
    """Times of one stream: start, then each message with its token count."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.times: list[float] = []
        self.tokens = 0

    def got(self, n: int) -> None:
        if n:
            self.times.append(time.perf_counter())
            self.tokens += n


async def timed(streams: int, tokens: int, one) -> tuple[float, list[Stream]]:
    """Tokens/s of `streams` concurrent streams of `tokens` each (ignore_eos: every stream gets them all;
    an SSE event may carry several tokens, so events are not counted as tokens)."""
    start = time.perf_counter()
    out = await asyncio.gather(*(one(i) for i in range(streams)))
    return streams * tokens / (time.perf_counter() - start), out


def sse_text_events(line: bytes) -> int:
    """1 for a server-sent completion chunk that carries text, else 0 (blank lines, `[DONE]`, usage)."""
    if not line.startswith(b"data: {"):
        return 0
    choices = json.loads(line[6:]).get("choices")
    return 1 if choices and choices[0].get("text") else 0


def record(path: Path_, rate: float, streams: list[Stream], tokens: int) -> None:
    path.rates.append(rate)
    path.tokens += tokens * len(streams)
    for s in streams:
        path.messages += len(s.times)
        if s.times:
            path.ttft.append(s.times[0] - s.start)
            path.itl.extend(b - a for a, b in zip(s.times, s.times[1:]))


def start_vllm_server(model: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="bench-vllm-", suffix=".log", delete=False)
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), *ENGINE]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--kv-cache-memory-bytes", str(1 << 30), "--disable-log-stats"]
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **ENV}, start_new_session=True
    )
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM's server exited; log {log.name}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc, port
        except OSError:
            time.sleep(1)


async def run_model(name: str, model: Path, args) -> list[tuple]:
    import aiohttp
    import psutil
    from monitoring import ENGINE_IDLE_S, frontends_placed, placement
    from vllm import AsyncEngineArgs, SamplingParams
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM

    from circuit_client import AsyncCircuitClient, Sampling
    from circuit_serve.config.serve import ServeConfig, cpu_list
    from circuit_serve.generation.placement import place_engine_core, place_process

    http_port = free_port()
    parser = argparse.ArgumentParser()
    ServeConfig.add_arguments(parser)
    config = ServeConfig.from_args(parser.parse_args(["--model", str(model), *ENGINE, "--kv-cache-gib", "1"]))
    rows = []
    ours = vllm_proc = engine = None  # each started inside the try, so a failed start stops the others
    try:
        ours = start_server(
            model,
            [*ENGINE, "--kv-cache-gib", "1", "--http-port", str(http_port), "--log-level", "WARNING", *placement(args)],
            env=ENV,
        )
        vllm_proc, vllm_port = start_vllm_server(model)
        engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**config.engine.engine_kwargs()))
        if args.worker_core:  # vLLM's server's engine core and the raw one where ours is (--engine-core-cpus)
            cpus = cpu_list(args.worker_core)
            place_engine_core(engine, cpus)
            for child in psutil.Process(vllm_proc.pid).children(recursive=True):
                if child.name().startswith("VLLM::EngineCor"):
                    place_process(child.pid, cpus)
        with frontends_placed(args, ours.pid, vllm_proc.pid):
            for streams, tokens in args.workloads:
                texts = [f"{PROMPTS[i % len(PROMPTS)]} {i}" for i in range(streams)]
                ids = [engine.get_tokenizer().encode(t) for t in texts]
                params = SamplingParams(
                    max_tokens=tokens, temperature=0.8, ignore_eos=True, output_kind=RequestOutputKind.DELTA
                )
                sampling = Sampling(max_new_tokens=tokens, temperature=0.8, ignore_eos=True)
                body = {"max_tokens": tokens, "temperature": 0.8, "stream": True, "ignore_eos": True}
                url = {
                    "vllm": f"http://127.0.0.1:{vllm_port}/v1/completions",
                    "ours": f"http://127.0.0.1:{http_port}/v1/completions",
                }
                served = {"vllm": str(model), "ours": model.name}
                run = 0
                async with (
                    AsyncCircuitClient(ours.target, timeout=600) as grpc_client,
                    aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http,
                ):

                    async def raw_one(i: int) -> Stream:
                        s = Stream()
                        async for out in engine.generate({"prompt_token_ids": ids[i]}, params, request_id=f"{run}-{i}"):
                            s.got(len(out.outputs[0].token_ids))
                        return s

                    async def grpc_one(i: int) -> Stream:
                        s = Stream()
                        async for chunk in grpc_client.stream(texts[i], sampling):
                            s.got(len(chunk.token_ids))
                        return s

                    def http_one(door: str):
                        async def one(i: int) -> Stream:
                            s = Stream()
                            request = {"model": served[door], "prompt": texts[i], **body}
                            async with http.post(url[door], json=request, raise_for_status=True) as response:
                                async for line in response.content:  # server-sent events, a line each
                                    s.got(sse_text_events(line))
                            return s

                        return one

                    paths = {"raw": raw_one, "grpc": grpc_one, "vllm_http": http_one("vllm"), "http": http_one("ours")}
                    stats = {k: Path_() for k in paths}
                    ratios: dict[str, list[float]] = {"grpc": [], "http": []}
                    for rep in range(args.repeats + 1):  # round 0 warms up
                        order = list(paths) if rep % 2 == 0 else list(reversed(paths))
                        got = {}
                        for k in order:
                            run += 1
                            await asyncio.sleep(ENGINE_IDLE_S)  # the previous path's engine stops spinning first
                            try:
                                got[k] = await asyncio.wait_for(timed(streams, tokens, paths[k]), args.round_timeout)
                            except Exception as exc:  # noqa: BLE001 - a stuck or failed path is reported, not fatal
                                FAILURES.append(f"{name} {streams}x{tokens} round {rep}: {LABELS[k]}: {exc!r}"[:300])
                                print(FAILURES[-1], flush=True)
                        if rep == 0 or len(got) < len(paths):
                            continue  # the warm-up, or a round missing a path: not counted
                        for k, (rate, ss) in got.items():
                            record(stats[k], rate, ss, tokens)
                        ratios["grpc"].append(got["grpc"][0] / got["raw"][0])
                        ratios["http"].append(got["http"][0] / got["vllm_http"][0])
                        LOADS.append(os.getloadavg()[0])
                        print(
                            f"{name} {streams}x{tokens} round {rep}: "
                            + ", ".join(f"{k} {v[0]:,.0f}" for k, v in got.items()),
                            flush=True,
                        )
                for k, base in (("raw", None), ("grpc", "grpc"), ("vllm_http", None), ("http", "http")):
                    st = stats[k]
                    ratio = statistics.median(ratios[base]) if base and ratios[base] else None
                    spread = ratios[base] if base else None
                    rows.append((name, f"{streams}x{tokens}", k, st, ratio, spread))
    finally:
        if engine is not None:
            engine.shutdown()
        if ours is not None:
            ours.stop()
        if vllm_proc is not None:
            vllm_proc.terminate()
            vllm_proc.wait(60)
    return rows


LABELS = {
    "raw": "raw AsyncLLM (in-process)",
    "grpc": "gRPC GenerateStream",
    "vllm_http": "vLLM's OpenAI server",
    "http": "circuit-serve HTTP",
}


def write(rows: list[tuple], args, load: tuple[str, str]) -> None:
    lines = [
        "# Front doors: gRPC vs the raw engine, HTTP vs vLLM's OpenAI server",
        "",
        f"`bench/front_doors.py`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, vLLM CPU build, float32,",
        f"eager, max_model_len 512; streams x tokens with ignore_eos, temperature 0.8; {args.repeats} timed rounds",
        "after a warm-up, paths alternating. Ratio: the median per-round ratio to the path's baseline",
        "(gRPC over raw, circuit-serve HTTP over vLLM's server), with the per-round ratios beside it; tokens/s is the",
        "median over rounds, with its min-max. TTFT and ITL in ms over all streams of all rounds; ITL is the gap",
        "between streamed messages, and tok/msg the tokens a message carried on average (1.00: one token a",
        "message; more: deltas coalesced while the reader lagged). Command: `" + " ".join(sys.argv) + "`.",
        "",
        f"Load average before: {load[0]}; after: {load[1]}; 1-minute load after each timed round "
        f"{min(LOADS or [0]):.1f}-{max(LOADS or [0]):.1f} (median {statistics.median(LOADS or [0]):.1f}). "
        "The load counts this benchmark's own servers and clients (four to six busy processes on 2 cores)",
        "and any other work on the machine. "
        + (
            f"Every engine's worker is bound to core(s) `{args.worker_core}` (`VLLM_CPU_OMP_THREADS_BIND`) and its "
            "engine core placed there too (ours: `--engine-core-cpus`; vLLM's server and the raw engine: the same "
            "call on their engine-core process); the servers' serving processes (ours, vLLM's API server) and this benchmark's "
            "process (the clients and the raw engine's front end) are placed on the other core(s)."
            if args.worker_core
            else "Workers and engine cores where vLLM and the OS put them."
        ),
        "",
        "| model | workload | path | tokens/s (min-max) | ratio | per round | TTFT p50 | TTFT p90 "
        "| ITL p50 | ITL p90 | ITL p99 | tok/msg |",
        "|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, work, k, st, ratio, spread in rows:
        if not st.rates:
            lines.append(f"| {name} | {work} | {LABELS[k]} | no round counted | | | | | | | | |")
            continue
        r = f"**{ratio:.3f}**" if ratio is not None else "(baseline)"
        each = ", ".join(f"{x:.2f}" for x in spread) if spread else ""
        rate = f"{statistics.median(st.rates):,.0f} ({min(st.rates):,.0f}-{max(st.rates):,.0f})"
        ttft, itl = st.ttft, st.itl
        lines.append(
            f"| {name} | {work} | {LABELS[k]} | {rate} | {r} | {each} | {pct(ttft, 0.5):.1f} | {pct(ttft, 0.9):.1f} "
            f"| {pct(itl, 0.5):.2f} | {pct(itl, 0.9):.2f} | {pct(itl, 0.99):.2f} | {st.tokens / max(st.messages, 1):.2f} |"
        )
    lines += ["", "Rounds not counted (a path timed out or failed):", ""] + [f"- {f}" for f in FAILURES or ["none"]]
    RESULTS.write_text("\n".join(lines) + "\n")
    print(RESULTS.read_text())


def workload(text: str) -> tuple[int, int]:
    s, t = text.split("x")
    return int(s), int(t)


def main() -> int:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["demo", "wide"], choices=["demo", "wide"])
    parser.add_argument("--workloads", nargs="+", type=workload, default=[(16, 128), (64, 32)])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--round-timeout", type=float, default=180.0, help="seconds one path's round may take")
    sys.path.insert(0, str(ROOT / "bench"))
    from monitoring import add_load_args, build_wide_model, server_environment

    add_load_args(parser, workload=False)  # --worker-core: every engine's worker and engine core alike
    args = parser.parse_args()
    os.environ.update(ENV)
    server_environment(args)

    from circuit_serve.demo import build_demo_model

    load0 = open("/proc/loadavg").read().split()[:3]
    rows: list[tuple] = []
    with tempfile.TemporaryDirectory(prefix="front-doors-") as tmp:
        work = Path(tmp)
        for name in args.models:
            model = build_demo_model(work / "demo", arch="llama", seed=0) if name == "demo" else build_wide_model(work)
            rows += asyncio.run(run_model(name, Path(model), args))
    load1 = open("/proc/loadavg").read().split()[:3]
    write(rows, args, (" ".join(load0), " ".join(load1)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
