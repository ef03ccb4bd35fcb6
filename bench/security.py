"""What TLS, mTLS and token checks cost per call: the same server and workload in plaintext
(the baseline), with TLS + a token, and with mTLS + a token, all three running at once and
measured in alternating rounds.

    .venv/bin/python bench/security.py            # demo model; writes bench/results/security.md
    .venv/bin/python bench/security.py --calls 500 --model DIR

For each configuration a `circuit-serve serve` subprocess serves the demo model on 127.0.0.1
(the test certificates are made here with `openssl`, as in the tests: circuit_serve/testing/certs.py). Measured
from one client over one channel: the latency of a unary Tokenize (the cheapest RPC: transport,
interceptors and auth dominate it), the time to open a new channel and make its first call (the
TLS handshake). Each figure is also given as a ratio to the plaintext server's, measured in the
same run. (Streamed generation is left out: on a shared 2-core machine three vLLM servers' token
rates vary 100-fold from one stream to the next, which would hide any cost of TLS.)
"""

from __future__ import annotations

import argparse
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
RESULTS = ROOT / "bench" / "results" / "security.md"
TOKEN = "bench-token-7f3e9a1c5b2d"


def measure(target: str, credentials, *, calls: int, fresh: int) -> dict[str, list[float]]:
    """One round on one server: `calls` Tokenize latencies, `fresh` first calls on new channels."""
    from circuit_client import CircuitClient

    out: dict[str, list[float]] = {"unary": [], "first": []}
    with CircuitClient(target, timeout=600, retries=0, credentials=credentials) as client:
        for _ in range(5):
            client.tokenize("warm up")
        for _ in range(calls):
            t0 = time.perf_counter()
            client.tokenize("hello world")
            out["unary"].append(time.perf_counter() - t0)
    for _ in range(fresh):
        t0 = time.perf_counter()
        with CircuitClient(target, timeout=60, retries=0, credentials=credentials) as client:
            client.tokenize("hello")
        out["first"].append(time.perf_counter() - t0)
    return out


def main() -> int:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: the demo model)")
    parser.add_argument("--rounds", type=int, default=9, help="rounds; each measures every configuration once")
    parser.add_argument("--calls", type=int, default=100, help="Tokenize calls per configuration and round")
    parser.add_argument("--fresh", type=int, default=10, help="new channels (each with one call) per round")
    args = parser.parse_args()

    from circuit_client import Credentials
    from circuit_serve.auth import token_sha256
    from circuit_serve.testing.certs import make_pki

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    work = Path(tempfile.mkdtemp(prefix="bench-security-"))
    model = args.model
    if model is None:
        from circuit_serve.demo import build_demo_model

        model = build_demo_model(work / "model")
    pki = make_pki(work / "pki")
    tokens = work / "tokens.json"
    tokens.write_text(f'[{{"name": "bench", "sha256": "{token_sha256(TOKEN)}", "scopes": ["generate"]}}]')
    engine = ["--dtype", "float32", "--max-model-len", "512", "--enforce-eager", "--kv-cache-gib", "1"]
    tls = ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
    configs = [
        ("plaintext, no tokens (baseline)", [], None),
        ("TLS + token", [*tls, "--auth-tokens", str(tokens)], Credentials(ca_cert=pki.ca, token=TOKEN)),
        (
            "mTLS + token",
            [*tls, "--tls-client-ca", str(pki.ca), "--auth-tokens", str(tokens)],
            Credentials(ca_cert=pki.ca, client_cert=pki.client_cert, client_key=pki.client_key, token=TOKEN),
        ),
    ]
    servers = []
    try:
        for name, flags, creds in configs:  # all up at once, so that rounds alternate under the same load
            server = start_server(
                model, [*engine, *flags, "--log-level", "WARNING"], log_prefix="bench-security-", credentials=creds
            )
            servers.append(server)
            configs[len(servers) - 1] = (name, server.target, creds)
        per_round: list[list[dict[str, float]]] = []  # round -> config -> medians
        for r in range(args.rounds):
            round_ = []
            for _name, target, creds in configs:
                m = measure(target, creds, calls=args.calls, fresh=args.fresh)
                round_.append(
                    {
                        "unary": statistics.median(m["unary"]),
                        "first": statistics.median(m["first"]),
                        "p90": sorted(m["unary"])[int(0.9 * len(m["unary"]))],
                    }
                )
            per_round.append(round_)
            print(
                f"round {r + 1}/{args.rounds}:",
                [f"{x['unary'] * 1e3:.2f}ms {x['first'] * 1e3:.1f}ms" for x in round_],
                flush=True,
            )
    finally:
        for server in servers:
            server.stop()

    def med(i: int, key: str) -> float:
        return statistics.median(rnd[i][key] for rnd in per_round)

    def ratio(i: int, key: str) -> float:  # median over rounds of this round's value / the baseline's
        return statistics.median(rnd[i][key] / rnd[0][key] for rnd in per_round)

    rows = []
    for i, (name, _, _) in enumerate(configs):
        rows.append(
            f"| {name} | {1e3 * med(i, 'unary'):.2f} ({ratio(i, 'unary'):.2f}x) | {1e3 * med(i, 'p90'):.2f} "
            f"| {1e3 * med(i, 'first'):.1f} ({ratio(i, 'first'):.2f}x) |"
        )
    model_name = "the demo model" if args.model is None else str(args.model)
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    RESULTS.write_text(f"""# Security: cost of TLS, mTLS and token checks

Run by `bench/security.py` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {platform.machine()}, {os.cpu_count()} CPUs
(shared with other work: load average at the end {load}), Python {platform.python_version()}; real server
(`circuit-serve serve`, vLLM CPU build, model {model_name}, float32), client on 127.0.0.1, one channel;
test certificates: EC P-256 made with openssl.

| configuration | Tokenize p50 ms (vs plaintext) | p90 ms | new channel + first call ms (vs plaintext) |
|---|---:|---:|---:|
{chr(10).join(rows)}

The three servers run side by side and the client measures them in turn, {args.rounds} rounds; each round
takes {args.calls} sequential Tokenize calls and {args.fresh} new channels (TCP + TLS handshake + one call) per
server. Figures are medians over rounds; each ratio is the median of the
per-round ratios to the plaintext server (same round, same background load). Tokenize is the cheapest RPC, so its latency is
mostly transport, interceptors and (with tokens) one SHA-256 and a dictionary lookup per call. Streamed
generation is not measured here (on this shared machine its rate is set by CPU contention, not by TLS).
""")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
