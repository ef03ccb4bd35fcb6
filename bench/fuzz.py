"""Fuzz a real server with 1,000 hypothesis-made requests of every RPC; write bench/results/fuzz.md.

    .venv/bin/python bench/fuzz.py                 # demo model, random transcoders, 1,000 requests
    .venv/bin/python bench/fuzz.py --requests 3000 --seed 7

The requests come from circuit_serve/testing/fuzz_requests.py (every field of every request message on the
wire, values no generated stub would send, random bytes). The server runs with the small input
limits of tests/hardening (`LIMIT_FLAGS`, beside the strategies) so that each limit is reachable. Pass: no request answered INTERNAL or
UNKNOWN, the server process alive at the end, and a valid request afterwards succeeds. The baseline:
the median latency of a valid Generate before the run, against the same after it (ratio ~1 means
the fuzzing left nothing behind), and the server's RSS before and after.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from circuit_serve.launch import start_server, stop_on_sigterm
from circuit_serve.process_memory import status_kib

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "fuzz.md"


def rss_mib(pid: int) -> float:
    """VmRSS of the server process itself (not its children), in MiB."""
    return status_kib(pid, "VmRSS").get("VmRSS", float("nan")) / 1024


def valid_latency(target: str, n: int = 20) -> float:
    from circuit_client import CircuitClient, Sampling

    times = []
    with CircuitClient(target, timeout=60) as client:
        for _ in range(n):
            t0 = time.perf_counter()
            client.generate("The capital of France is", Sampling(max_new_tokens=4, temperature=0))
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(args: argparse.Namespace, target: str, pid: int) -> dict:
    import grpc
    from hypothesis import HealthCheck, given, settings

    from circuit_serve.testing.fuzz_requests import FORBIDDEN, fuzz_call, send

    seen: Counter = Counter()
    kinds: Counter = Counter()
    bad: list[tuple[str, str, str]] = []
    with grpc.insecure_channel(target) as channel:

        @settings(max_examples=args.requests, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(fuzz_call())
        def one(call):
            code, details = send(channel, call)
            seen[(call.rpc.path.rsplit("/", 1)[1], code.name)] += 1
            kinds[call.kind] += 1
            if code in FORBIDDEN:
                bad.append((call.rpc.path, code.name, details[:200]))

        if args.seed is not None:
            from hypothesis import seed as fix_seed

            one = fix_seed(args.seed)(one)
        started = time.perf_counter()
        one()
        seconds = time.perf_counter() - started
    return {"seen": seen, "kinds": kinds, "bad": bad, "seconds": seconds}


def write_results(
    args, out: dict, before: tuple[float, float], after: tuple[float, float], alive: bool, valid_after: bool
) -> str:
    total = sum(out["seen"].values())
    by_code: Counter = Counter()
    for (_, code), n in out["seen"].items():
        by_code[code] += n
    rows = "\n".join(f"| {m} | {c} | {n} |" for (m, c), n in sorted(out["seen"].items()))
    verdict = "PASS" if not out["bad"] and alive and valid_after and total >= args.requests else "FAIL"
    text = f"""# Fuzz: {total} hypothesis-made requests against a real server

{verdict}: {len(out["bad"])} requests answered INTERNAL or UNKNOWN; server alive after the run: {alive};
a valid Generate afterwards succeeded: {valid_after}.

Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} ({os.cpu_count()} CPUs, load average
{" ".join(f"{x:.2f}" for x in os.getloadavg())}), {out["seconds"]:.0f} s for the requests
({total / out["seconds"]:.1f} requests/s, one at a time). Server: the demo model with random transcoders
and the small input limits of tests/hardening/conftest.py.

| baseline (same run) | before | after | ratio |
|---|---|---|---|
| median valid Generate latency (4 tokens) | {before[0] * 1e3:.1f} ms | {after[0] * 1e3:.1f} ms | {after[0] / before[0]:.2f} |
| server RSS | {before[1]:.0f} MiB | {after[1]:.0f} MiB | {after[1] / before[1]:.2f} |

Requests by kind: {", ".join(f"{k} {n}" for k, n in sorted(out["kinds"].items()))}
(valid+field: a valid request with one or two fields, nested ones included, overridden by fuzzed
values; message: every field fuzzed; message+garbage: trailing random bytes; random: random bytes).

Answers by status: {", ".join(f"{c} {n}" for c, n in by_code.most_common())}.

| RPC | status | requests |
|---|---|---|
{rows}
"""
    if out["bad"]:
        text += "\nForbidden answers:\n\n" + "\n".join(f"- `{p}` {c}: {d}" for p, c, d in out["bad"][:20]) + "\n"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    return text


def main() -> int:
    stop_on_sigterm()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: random)")
    ap.add_argument("--model", type=Path, default=None, help="model directory (default: build the demo model)")
    args = ap.parse_args()

    from circuit_serve.demo.random_transcoders import write_random_transcoders
    from circuit_serve.testing.fuzz_requests import LIMIT_FLAGS

    work = Path(tempfile.mkdtemp(prefix="bench-fuzz-"))
    if args.model is None:
        from circuit_serve.demo import build_demo_model

        args.model = build_demo_model(work / "model")
    tc = write_random_transcoders(args.model, work / "transcoders", d_transcoder=128, target_l0=8, seed=5)
    flags = [
        "--dtype",
        "float32",
        "--max-model-len",
        "512",
        "--kv-cache-gib",
        "1",
        "--enforce-eager",
        "--transcoders",
        str(tc),
        *[str(x) for kv in LIMIT_FLAGS.items() for x in kv],
    ]
    server = start_server(args.model, [*flags, "--log-level", "WARNING"], log_prefix="bench-fuzz-")
    target = server.target
    try:
        before = (valid_latency(target), rss_mib(server.pid))
        out = run(args, target, server.pid)
        alive = server.process.poll() is None
        try:
            after = (valid_latency(target), rss_mib(server.pid))
            valid_after = True
        except Exception as exc:  # reported, not raised: the file records the failure
            print(f"valid request after the run failed: {exc}", file=sys.stderr)
            after, valid_after = (float("nan"), float("nan")), False
    finally:
        server.stop()
    print(write_results(args, out, before, after, alive, valid_after))
    return 0 if not out["bad"] and alive and valid_after else 1


if __name__ == "__main__":
    sys.exit(main())
