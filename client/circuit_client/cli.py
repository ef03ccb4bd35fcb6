"""`circuit`: call a circuit-serve server from the terminal.

circuit generate "The capital of France is" --max-new-tokens 16 --temperature 0
circuit tokenize "Hello world"
circuit info
circuit health            # exit status 0 only when SERVING (used by the Docker HEALTHCHECK)
circuit info --ca-cert ca.pem --client-cert me.pem --client-key me.key   # TLS / mTLS; token in CIRCUIT_TOKEN
circuit generate "The capital of France is" --monitor      # + the watchlist summary
circuit generate "The capital of France is" --watch cant-answer:3:120:2.5:stop   # + a rule of this request
circuit features --prompt "The capital of France is" --top-k 5
circuit steer --prompt "The capital of France is" --intervene 2:17:set:0
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from circuit_client import attribution_cli, credentials_cli, features_cli
from circuit_client._convert import parse_message
from circuit_client.errors import CircuitRpcError
from circuit_client.monitor import Monitoring, WatchRule
from circuit_client.sync import CircuitClient
from circuit_client.types import Sampling

DEFAULT_TARGET = "localhost:50051"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="circuit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.add_argument(
            "--target",
            default=DEFAULT_TARGET,
            help="server host:port, dns:///host:port (round robin over its addresses) or ipv4:a:p,b:p (default %(default)s)",
        )
        p.add_argument("--timeout", type=float, default=60.0, help="deadline in seconds")
        credentials_cli.add_arguments(p)
        return p

    g = add("generate", "stream a completion to the terminal")
    g.add_argument("prompt", nargs="?", help="text (or give --message)")
    g.add_argument(
        "--message",
        type=parse_message,
        action="append",
        metavar="ROLE:CONTENT",
        help="a chat message ROLE:CONTENT, rendered with the model's chat template (repeatable)",
    )
    g.add_argument("--max-new-tokens", type=int, default=32)
    g.add_argument("--temperature", type=float, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", default=[], help="stop sequence (repeatable)")
    g.add_argument("--usage", action="store_true", help="print request id, finish reason and token counts")
    g.add_argument("--monitor", action="store_true", help="monitor the server's watchlist; print its summary")
    g.add_argument(
        "--watch",
        action="append",
        default=[],
        type=_watch_rule,
        metavar="NAME:LAYER:INDEX:THRESHOLD[:ACTION]",
        help="also watch this feature with this rule (record, flag or stop; default record); repeatable",
    )
    g.add_argument("--steering-preset", default="", metavar="NAME", help="steer with this preset of the server")
    g.add_argument(
        "--skip-default-steering",
        action="store_true",
        help="not the server's default steering preset (needs the steer scope)",
    )

    t = add("tokenize", "show how the served tokenizer splits a text")
    t.add_argument("text", nargs="?", default="")
    t.add_argument(
        "--message",
        type=parse_message,
        action="append",
        metavar="ROLE:CONTENT",
        help="a chat message ROLE:CONTENT, rendered with the model's chat template (repeatable)",
    )
    t.add_argument("--no-special-tokens", action="store_true")

    add("info", "describe the served model")

    h = add("health", "print the health status; exit 0 only when SERVING")
    h.add_argument("--service", default="", help="a service name (default: the whole server)")
    _COMMANDS.update(attribution_cli.register(add))  # attribute, graph, attribute-batch, job
    _COMMANDS.update(features_cli.register(add))  # features, steer
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    retries = 0 if args.command == "health" else 3
    credentials = credentials_cli.credentials_from_args(args)
    with CircuitClient(args.target, timeout=args.timeout, retries=retries, credentials=credentials) as client:
        try:
            return _COMMANDS[args.command](client, args)
        except CircuitRpcError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1


def _generate(client: CircuitClient, args: argparse.Namespace) -> int:
    sampling = Sampling(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        stop=tuple(args.stop),
    )
    if bool(args.prompt) == bool(args.message):
        print("error: give a prompt or --message (not both)", file=sys.stderr)
        return 2
    monitor = Monitoring(rules=tuple(args.watch)) if args.watch else args.monitor
    for chunk in client.stream(
        args.prompt,
        sampling,
        monitor=monitor,
        messages=args.message,
        steering_preset=args.steering_preset,
        skip_default_steering=args.skip_default_steering,
    ):
        if chunk.text:
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
        if chunk.finished:
            sys.stdout.write("\n")
            if args.usage and chunk.usage:
                print(
                    f"[{chunk.request_id}] finish={chunk.finish_reason} prompt_tokens={chunk.usage.prompt_tokens} "
                    f"completion_tokens={chunk.usage.completion_tokens}",
                    file=sys.stderr,
                )
            if chunk.monitor is not None:
                print(chunk.monitor.summary())
    return 0


def _watch_rule(text: str) -> WatchRule:
    parts = text.split(":")
    try:
        name, layer, index, threshold, *action = parts
        if len(action) > 1:
            raise ValueError
        return WatchRule(name, int(layer), int(index), float(threshold), *(action or ["record"]))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--watch {text!r}: expected NAME:LAYER:INDEX:THRESHOLD[:ACTION]") from None


def _tokenize(client: CircuitClient, args: argparse.Namespace) -> int:
    result = client.tokenize(args.text, add_special_tokens=not args.no_special_tokens, messages=args.message)
    for token_id, token in zip(result.token_ids, result.tokens, strict=True):
        print(f"{token_id}\t{token!r}")
    return 0


def _info(client: CircuitClient, args: argparse.Namespace) -> int:
    print(json.dumps(asdict(client.model_info()), indent=2))
    return 0


def _health(client: CircuitClient, args: argparse.Namespace) -> int:
    try:
        status = client.health(args.service)
    except CircuitRpcError as err:
        print(f"UNREACHABLE ({err.code.name})")
        return 1
    print(status)
    return 0 if status == "SERVING" else 1


_COMMANDS = {"generate": _generate, "tokenize": _tokenize, "info": _info, "health": _health}

if __name__ == "__main__":
    sys.exit(main())
