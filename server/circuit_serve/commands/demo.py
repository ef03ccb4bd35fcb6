"""`circuit-serve demo`: build the demo model if missing, serve it, call it, show metrics, stop.

What the README's first command runs after installing. Everything is local: the
model is built offline, the server listens on 127.0.0.1 on free ports. When the model
directory holds transcoders (the trained demo model does), the server loads them and
the demo audits the first generated token: it asks for the attribution graph of that
token by the generation's request id, prints its strongest paths with feature labels and
writes the graph's interactive HTML view next to the model directory.

With --tls-cert/--tls-key (and --tls-client-ca, --auth-tokens) the demo server speaks TLS
(mTLS, tokens); the demo's client then connects with --ca-cert, --client-cert/--client-key
and the token in CIRCUIT_TOKEN or --token-file, as `circuit` does.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_MODEL_DIR = Path("demo/model")
# A fact of the demo model's synthetic world (circuit_serve.demo.data.World, seed 0): it answers "tesville".
DEFAULT_PROMPT = "the capital of veigrouan is"

# The /metrics samples the demo prints.
SHOWN_METRICS = (
    "vllm:request_success_total",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:time_to_first_token_seconds_count",
    "vllm:time_to_first_token_seconds_sum",
    "vllm:e2e_request_latency_seconds_sum",
    "vllm:num_requests_running",
    "vllm:kv_cache_usage_perc",
    "circuit_rpc_requests_total",
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="serve the demo model and call it once", description=__doc__)
    parser.add_argument(
        "--model",
        type=Path,
        default=DEFAULT_MODEL_DIR,
        help="model directory; the demo model is built there if missing (default %(default)s)",
    )
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    from circuit_client import credentials_cli
    from circuit_serve.config.security import SecurityConfig

    SecurityConfig.add_arguments(parser)  # passed on to the server
    credentials_cli.add_arguments(parser)  # used by the demo's client
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import sys
    import time
    import urllib.request

    from circuit_client import CircuitClient, Sampling, credentials_cli
    from circuit_serve.launch import ServerExited, start_server

    credentials = credentials_cli.credentials_from_args(args)

    model_dir: Path = args.model
    if not (model_dir / "config.json").exists():
        from circuit_serve.demo import build_demo_model

        print(f"building the demo model in {model_dir} ...", flush=True)
        build_demo_model(model_dir)

    log_path = model_dir.parent / "server.log"
    flags = ["--dtype", "float32", "--max-model-len", "512", "--enforce-eager", "--kv-cache-gib", "1"]
    for flag, value in (
        ("--tls-cert", args.tls_cert),
        ("--tls-key", args.tls_key),
        ("--tls-client-ca", args.tls_client_ca),
        ("--auth-tokens", args.auth_tokens),
    ):
        if value:
            flags += [flag, str(value)]
    transcoders, labels = model_dir / "transcoders", model_dir / "labels.json"
    if transcoders.is_dir():
        flags += ["--transcoders", str(transcoders)]
        if labels.is_file():
            flags += ["--labels", str(labels)]
    print(f"starting: circuit-serve serve --model {model_dir} on free local ports (log: {log_path})", flush=True)
    started = time.monotonic()
    try:
        server = start_server(model_dir, flags, log_path=log_path, metrics=True, credentials=credentials)
    except ServerExited:
        print(f"the server exited; see {log_path}", file=sys.stderr)
        return 1
    try:
        target = server.target
        with CircuitClient(target, timeout=120, retries=0, credentials=credentials) as client:
            print(
                f"SERVING after {time.monotonic() - started:.1f}s on {target} (metrics port "
                f"{server.metrics_port}); model: {client.model_info().model_name}\n"
            )

            print(f"> {args.prompt}")
            sampling = Sampling(max_new_tokens=args.max_new_tokens, temperature=0.0)
            request_id = ""
            for chunk in client.stream(args.prompt, sampling):
                print(chunk.text, end="", flush=True)
                if chunk.finished:
                    request_id = chunk.request_id
                    print(
                        f"\n\n[{chunk.request_id}] finish_reason={chunk.finish_reason} "
                        f"prompt_tokens={chunk.usage.prompt_tokens} "
                        f"completion_tokens={chunk.usage.completion_tokens}"
                    )
        if transcoders.is_dir() and request_id:
            _show_graph(target, request_id, model_dir.parent / "graph.html", credentials)

        metrics_url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        with urllib.request.urlopen(metrics_url, timeout=10) as resp:
            metrics = resp.read().decode()
        print(f"\nmetrics ({metrics_url}):")
        for line in metrics.splitlines():
            if line.startswith(SHOWN_METRICS) and not line.endswith(" 0.0"):
                print(f"  {line}")
        return 0
    finally:
        server.stop()


def _show_graph(target: str, request_id: str, html: Path, credentials=None) -> None:
    """Audit completion token 0 of `request_id`, print the graph's strongest paths, write its HTML view."""
    from circuit_client.attribution import AttributionClient
    from circuit_client.graph_html import write_graph_html
    from circuit_client.graph_text import strongest_paths

    with AttributionClient(target, timeout=300, credentials=credentials) as client:
        result = client.attribute(request_id=request_id, token_index=0, output="json")
    graph = result.frontend()
    info = graph["metadata"].get("info", {})
    print(
        f"\nattribution graph of completion token 0 ({result.source}; key {result.key[:16]}...): "
        f"{len(graph['nodes'])} nodes, {len(graph['links'])} edges after pruning, "
        f"replacement score {info.get('replacement_score', float('nan')):.2f}, "
        f"completeness score {info.get('completeness_score', float('nan')):.2f}"
    )
    print("strongest inputs to the predicted token (edge weight <- source):")
    for line in strongest_paths(graph, top=4, depth=2):
        print(f"  {line}")
    write_graph_html(graph, html, key=result.key, source=result.source)
    print(f"the whole graph, to explore: {html} (open it in a browser)")
