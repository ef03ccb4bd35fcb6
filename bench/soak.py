"""Soak: mixed traffic against one server for 10 minutes; RSS over time and latency per RPC.

    .venv/bin/python bench/soak.py                  # 10 minutes, demo model, random transcoders
    .venv/bin/python bench/soak.py --minutes 2      # a short run (results are still written)

Traffic, each kind in its own client thread(s), back to back for the whole run:
- GenerateStream (2 threads, 32 tokens), unary Generate (16 tokens), streams cancelled after 3
  messages, Tokenize;
- Attribute: alternately a miss (a new cache key) and a hit (a key computed before);
- FeatureActivations (top-k) and Steer;
- bad requests (over a limit, vLLM's temperature bound, undecodable bytes), which must get
  INVALID_ARGUMENT.
The server's completions store and graph cache are bounded small (--completions-max,
--graph-cache-memory-mib) so that both fill during the warm-up; after it the resident memory of the
server (its process tree) must stay within 5% of its value at the end of the warm-up (the baseline
measured in the same run). The verdict reads the heap (RssAnon): VmRSS also counts file-backed pages
that the kernel drops and re-reads when other processes need memory, which moves it either way. Any
failed valid request fails the run. Writes bench/results/soak.md.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from circuit_serve.launch import start_server, stop_on_sigterm
from circuit_serve.process_memory import tree_status_kib

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "soak.md"
PROMPTS = [
    "the old river runs to the sea and the",
    "One, two, three, four,",
    "A transcoder reads the",
    "the capital of the country is",
    "Once upon a time there was a",
]


def tree_rss_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, RssAnon) in MiB of `pid` and every descendant (vLLM may run its engine in a child
    process). RssAnon is the heap: what a leak grows. VmRSS adds file-backed pages (libraries,
    memory-mapped weights) that the kernel drops and re-reads under memory pressure."""
    kib = tree_status_kib(pid, "VmRSS", "RssAnon")
    return kib["VmRSS"] / 1024, kib["RssAnon"] / 1024


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.failures: list[tuple[str, str]] = []

    def ok(self, kind: str, seconds: float) -> None:
        with self.lock:
            self.latency[kind].append(seconds)

    def fail(self, kind: str, error: BaseException) -> None:
        with self.lock:
            self.failures.append((kind, f"{type(error).__name__}: {error}"[:300]))


def workers(target: str, rec: Recorder, stop: threading.Event) -> list[threading.Thread]:
    import grpc

    from circuit_client import CircuitClient, Sampling
    from circuit_client.attribution import AttributionClient, AttributionSettings
    from circuit_client.features import FeaturesClient, Intervention
    from circuit_proto.v1 import generation_pb2 as gpb

    def loop(kind: str, body, pause_s: float = 0.0) -> threading.Thread:
        def run():
            for i in itertools.count():
                if stop.is_set():
                    return
                t0 = time.perf_counter()
                try:
                    label = body(i) or kind
                    rec.ok(label, time.perf_counter() - t0)
                    time.sleep(pause_s)
                except Exception as exc:  # noqa: BLE001 - every failure is recorded and fails the run
                    rec.fail(kind, exc)
                    time.sleep(0.5)

        return threading.Thread(target=run, name=kind, daemon=True)

    gen = CircuitClient(target, timeout=120)
    graphs = AttributionClient(target, timeout=300)
    feats = FeaturesClient(target, timeout=120)
    raw = grpc.insecure_channel(target)
    settings = AttributionSettings(max_feature_nodes=32, batch_size=32)
    seen_keys: list[tuple[str, AttributionSettings]] = []
    new_keys = itertools.count(1)

    def stream(i):
        chunks = list(
            gen.stream(PROMPTS[i % len(PROMPTS)], Sampling(max_new_tokens=32, temperature=0.7, seed=i, ignore_eos=True))
        )
        assert chunks[-1].finished and sum(len(c.token_ids) for c in chunks) == 32

    def unary(i):
        assert (
            len(
                gen.generate(
                    PROMPTS[i % len(PROMPTS)], Sampling(max_new_tokens=16, temperature=0, ignore_eos=True)
                ).token_ids
            )
            == 16
        )

    def cancelled(i):
        it = gen.stream(PROMPTS[i % len(PROMPTS)], Sampling(max_new_tokens=200, ignore_eos=True))
        # vLLM merges the deltas a slow reader has not taken yet, so a loaded machine may send all
        # 200 tokens in fewer than 3 messages: then the stream simply ends before the cancel
        for _, chunk in zip(range(3), it):
            if chunk.finished:
                return "GenerateStream (ended before the cancel)"
        it.close()  # cancels the call; the server aborts the vLLM request

    def tokenize(i):
        assert gen.tokenize(PROMPTS[i % len(PROMPTS)]).token_ids

    def attribute(i):
        if i % 2 == 0 or not seen_keys:  # a miss: a key never asked before (the edge threshold is in the key)
            s = replace(settings, edge_threshold=0.9 + 0.09 * next(new_keys) / 1_000_000)
            result = graphs.attribute(PROMPTS[i % len(PROMPTS)], s, output="json")
            assert result.source == "computed", result.source
            seen_keys.append((PROMPTS[i % len(PROMPTS)], s))
            del seen_keys[:-4]  # the newest few: still in the small cache
            return "Attribute (miss)"
        prompt, s = seen_keys[-1]
        result = graphs.attribute(prompt, s, output="json")
        assert result.source == "cache", result.source
        return "Attribute (hit)"

    def features(i):
        if i % 4 == 3:
            feats.steer(PROMPTS[i % len(PROMPTS)], [Intervention(0, 1, "set", 3.0, positions=(1,))], max_new_tokens=8)
            return "Steer"
        assert feats.activations(PROMPTS[i % len(PROMPTS)], top_k=5)
        return "FeatureActivations"

    bad_payloads = [
        (
            "/circuit.v1.Generation/Generate",
            gpb.GenerateRequest(prompt="hi", sampling=gpb.SamplingParams(temperature=1e30)).SerializeToString(),
        ),
        ("/circuit.v1.Generation/Generate", gpb.GenerateRequest(prompt="x" * 300_000).SerializeToString()),
        ("/circuit.v1.Generation/GenerateStream", b"\x0a\x02\xff\xfe"),
        ("/circuit.v1.Attribution/GetGraph", b"\xff\xff\xff"),
        ("/circuit.v1.Features/FeatureActivations", b"\x20\xff\xff\xff\xff\x0f"),  # top_k 2^32-1
    ]

    def bad(i):
        path, payload = bad_payloads[i % len(bad_payloads)]
        kwargs = dict(request_serializer=lambda b: b, response_deserializer=lambda b: b)
        try:
            if path.endswith("Stream"):
                list(raw.unary_stream(path, **kwargs)(payload, timeout=60))
            else:
                raw.unary_unary(path, **kwargs)(payload, timeout=60)
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise AssertionError(f"{path} got {err.code().name}: {err.details()}") from None
            return "bad request (INVALID_ARGUMENT)"
        raise AssertionError(f"{path} accepted a bad request")

    return [
        loop("GenerateStream", stream),
        loop("GenerateStream", stream),
        loop("Generate", unary),
        loop("GenerateStream (cancelled)", cancelled),
        loop("Tokenize", tokenize, 0.05),
        loop("Attribute", attribute),
        loop("FeatureActivations", features),
        loop("bad request", bad, 0.05),
    ]


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def write_results(
    args, samples: list[tuple[float, float, float]], warmup_s: float, rec: Recorder, loads: list
) -> tuple[str, bool]:
    def growth_of(k: int) -> tuple[float, float, float, float]:
        """(baseline, final, peak after the warm-up, growth) of sample column k (1 VmRSS, 2 RssAnon)."""
        base = statistics.median([x[k] for x in samples if warmup_s - 30 <= x[0] <= warmup_s + 1] or [samples[0][k]])
        final = statistics.median([x[k] for x in samples if x[0] >= samples[-1][0] - 60])
        peak = max(x[k] for x in samples if x[0] >= warmup_s)
        return base, final, peak, final / base - 1

    rss_base, rss_final, rss_peak, rss_growth = growth_of(1)
    base, final, peak_after, growth = growth_of(2)
    passed = growth < 0.05 and not rec.failures
    every = max(1, len(samples) // 24)
    shown = samples[::every] + ([samples[-1]] if (len(samples) - 1) % every else [])
    rss_rows = "\n".join(
        f"| {t / 60:.1f} | {a:.0f} | {m:.0f} |{' warm-up' if t < warmup_s else ''}" for t, m, a in shown
    )
    lat_rows = "\n".join(
        f"| {kind} | {len(xs)} | {percentile(xs, 0.5) * 1e3:.0f} | {percentile(xs, 0.99) * 1e3:.0f} |"
        for kind, xs in sorted(rec.latency.items())
    )
    failures = "\n".join(f"- {k}: {e}" for k, e in rec.failures[:20]) or "none"
    text = f"""# Soak: {args.minutes:g} minutes of mixed traffic against one server

{"PASS" if passed else "FAIL"}: resident heap (RssAnon) after the warm-up grew {growth * 100:+.1f}% (limit +5%;
ratio to the end-of-warm-up baseline measured in this run {final / base:.3f}); VmRSS {rss_growth * 100:+.1f}%;
failed valid requests: {len(rec.failures)}.

Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} ({os.cpu_count()} CPUs shared with other work;
load average during the run, sampled each minute: {", ".join(f"{x:.1f}" for x in loads)}).
Server: the demo model (float32, vLLM CPU, eager, 1 GiB KV cache) with random JumpReLU transcoders,
no Redis (in-process graph cache of {args.cache_mib:g} MiB), --completions-max {args.completions_max}. Warm-up:
the first {warmup_s / 60:.1f} minutes. Memory is the server's process tree, sampled every
{args.sample_s:g} s. RssAnon (heap, what a leak grows; no swap here, so it stays resident): baseline
{base:.0f} MiB (median around the end of the warm-up), final {final:.0f} MiB (median of the last minute),
peak after the warm-up {peak_after:.0f} MiB. VmRSS (heap + file-backed pages such as libraries and
mapped weights, which the kernel drops under memory pressure from other processes): baseline
{rss_base:.0f}, final {rss_final:.0f}, peak after the warm-up {rss_peak:.0f} MiB.

## Memory over time

| minute | RssAnon MiB | VmRSS MiB |
|---|---|---|
{rss_rows}

## Latency per RPC (client side, whole run, warm-up included)

| RPC | calls | p50 ms | p99 ms |
|---|---|---|---|
{lat_rows}

Failed valid requests: {failures}
"""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    return text, passed


def main() -> int:
    stop_on_sigterm()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--warmup-fraction", type=float, default=0.2, help="share of the run counted as warm-up")
    ap.add_argument("--sample-s", type=float, default=5.0, help="seconds between RSS samples")
    ap.add_argument("--completions-max", type=int, default=200)
    ap.add_argument("--cache-mib", type=float, default=2.0, help="in-process graph cache size")
    ap.add_argument("--model", type=Path, default=None, help="model directory (default: build the demo model)")
    args = ap.parse_args()

    from circuit_serve.demo.random_transcoders import write_random_transcoders

    work = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    if args.model is None:
        from circuit_serve.demo import build_demo_model

        args.model = build_demo_model(work / "model")
    tc = write_random_transcoders(args.model, work / "transcoders", d_transcoder=256, target_l0=16, seed=1)
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
        "--graph-cache-memory-mib",
        str(args.cache_mib),
        "--completions-max",
        str(args.completions_max),
        "--attribution-max-queued",
        "16",
    ]
    server = start_server(args.model, [*flags, "--log-level", "WARNING"], log_prefix="bench-soak-")
    target = server.target
    rec, stop = Recorder(), threading.Event()
    samples: list[tuple[float, float, float]] = []
    loads: list[float] = []
    duration, warmup = args.minutes * 60, args.minutes * 60 * args.warmup_fraction
    try:
        threads = workers(target, rec, stop)
        started = time.monotonic()
        for t in threads:
            t.start()
        next_load = 0.0
        while (now := time.monotonic() - started) < duration:
            samples.append((now, *tree_rss_mib(server.pid)))
            if now >= next_load:
                loads.append(os.getloadavg()[0])
                next_load += 60
            print(
                f"{now / 60:5.1f} min  RSS {samples[-1][1]:.0f} MiB  anon {samples[-1][2]:.0f} MiB"
                f"  calls {sum(map(len, rec.latency.values()))}"
                f"  failures {len(rec.failures)}",
                flush=True,
            )
            assert server.process.poll() is None, "the server exited"
            time.sleep(args.sample_s)
        stop.set()
        for t in threads:
            t.join(300)
    finally:
        stop.set()
        server.stop()
    text, passed = write_results(args, samples, warmup, rec, loads)
    print(text)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
