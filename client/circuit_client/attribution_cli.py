"""`circuit attribute` and `circuit graph`: attribution graphs from the terminal.

circuit attribute --prompt "The capital of France is" --out graph.json
circuit attribute --request-id 3f2a... --token-index 4 --out audit.json --max-feature-nodes 1024
circuit graph KEY --out graph.json
circuit graph KEY --html graph.html      # the interactive view: one file, opens offline in a browser
circuit attribute-batch audit.jsonl --out graphs/ --max-feature-nodes 256   # a resumable backfill
circuit job KEY [--watch | --cancel]     # a graph job's status on any replica of a fleet
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from circuit_client._convert import parse_message
from circuit_client.attribution import (
    DEFAULT_ATTRIBUTION_TIMEOUT_S,
    Accepted,
    AttributionClient,
    AttributionSettings,
    Event,
    GraphResult,
    Queued,
    Running,
)
from circuit_client.batch import read_items, run_batch
from circuit_client.graph_html import write_graph_html

Command = Callable[[object, argparse.Namespace], int]


def register(add: Callable[[str, str], argparse.ArgumentParser]) -> dict[str, Command]:
    """Add the subcommands with `add(name, help)` (which adds --target/--timeout); return name -> handler."""
    a = add("attribute", "compute an attribution graph (live progress); write its frontend JSON and/or HTML view")
    src = a.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="text to explain the next token of")
    src.add_argument("--token-ids", help="comma-separated token ids (BOS is added when missing)")
    src.add_argument("--request-id", help="a generation this server served (with --token-index)")
    src.add_argument(
        "--message",
        type=parse_message,
        action="append",
        metavar="ROLE:CONTENT",
        help="a chat message ROLE:CONTENT, rendered with the model's chat template (repeatable)",
    )
    a.add_argument("--token-index", type=int, help="completion token to explain (0-based)")
    _settings_flags(a)
    a.add_argument("--target-token", type=int, action="append", default=[], help="explicit target (repeatable)")
    a.add_argument(
        "--contrast", action="append", default=[], metavar="A,B", help='target "logit(A) - logit(B)" (repeatable)'
    )
    a.add_argument("--out", help="where to write the frontend graph JSON")
    a.add_argument("--html", help="write the interactive graph view (one self-contained HTML file) here")
    a.add_argument("--proto-out", help="also write the circuit.v1.Graph protobuf here")
    a.add_argument(
        "--background",
        action="store_true",
        help="keep computing if this command is interrupted (fetch later with `circuit graph KEY`)",
    )
    a.set_defaults(timeout=DEFAULT_ATTRIBUTION_TIMEOUT_S)

    g = add("graph", "fetch a cached graph by key; write its frontend JSON and/or HTML view")
    g.add_argument("key")
    g.add_argument("--out", help="where to write the frontend graph JSON")
    g.add_argument("--html", help="write the interactive graph view (one self-contained HTML file) here")
    g.add_argument("--proto-out")

    b = add(
        "attribute-batch",
        "graphs of a JSONL file of prompts or request ids, as backfill jobs; resumable (DIR/index.jsonl)",
    )
    b.add_argument(
        "file", help='JSONL: {"prompt": ...}, {"prompt_token_ids": [...]} or {"request_id": ..., "token_index": N}'
    )
    b.add_argument("--out", required=True, help="directory for the graphs (KEY.json) and index.jsonl")
    b.add_argument("--parallel", type=int, default=4, help="graphs submitted at once")
    _settings_flags(b)
    b.set_defaults(timeout=DEFAULT_ATTRIBUTION_TIMEOUT_S)

    j = add("job", "a graph job's status (any replica of a fleet answers); --watch follows it, --cancel stops it")
    j.add_argument("key")
    mode = j.add_mutually_exclusive_group()
    mode.add_argument("--watch", action="store_true")
    mode.add_argument("--cancel", action="store_true")
    return {"attribute": _attribute, "graph": _graph, "attribute-batch": _batch, "job": _job}


def _settings_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-n-logits", type=int)
    p.add_argument("--desired-logit-prob", type=float)
    p.add_argument("--max-feature-nodes", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--node-threshold", type=float)
    p.add_argument("--edge-threshold", type=float)
    p.add_argument("--head-loadings", action="store_true", default=None, help="split kept edges by attention head")
    p.add_argument(
        "--qk-edge",
        type=_qk_edge,
        action="append",
        default=[],
        metavar="LAYER,HEAD,QUERY_POS,KEY_POS",
        help="split this attention edge's score by the query's and the key's components (repeatable)",
    )


def _qk_edge(text: str) -> tuple[int, int, int, int]:
    parts = text.split(",")
    if len(parts) != 4 or not all(x.strip().isdigit() for x in parts):
        raise argparse.ArgumentTypeError(f"expected LAYER,HEAD,QUERY_POS,KEY_POS (four integers), got {text!r}")
    layer, head, query_pos, key_pos = (int(x) for x in parts)
    return layer, head, query_pos, key_pos


def _settings(args: argparse.Namespace, targets=()) -> AttributionSettings:
    return AttributionSettings(
        max_n_logits=args.max_n_logits,
        desired_logit_prob=args.desired_logit_prob,
        max_feature_nodes=args.max_feature_nodes,
        batch_size=args.batch_size,
        node_threshold=args.node_threshold,
        edge_threshold=args.edge_threshold,
        targets=list(targets),
        head_loadings=args.head_loadings,
        qk_edges=list(args.qk_edge),
    )


def _batch(client: object, args: argparse.Namespace) -> int:
    try:
        items = read_items(args.file)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bar = _Bar(sys.stderr)
    summary = run_batch(
        AttributionClient(client, timeout=args.timeout),
        items,
        args.out,
        _settings(args),
        parallel=args.parallel,
        on_progress=bar,
    )
    bar.done()
    print(
        f"{summary.total} inputs: {summary.written} written, {summary.skipped} already done, "
        f"{len(summary.failed)} failed; index {args.out}/index.jsonl",
        file=sys.stderr,
    )
    for line, why in sorted(summary.failed.items()):
        print(f"line {line + 1}: {why}", file=sys.stderr)
    return 1 if summary.failed else 0


def _job(client: object, args: argparse.Namespace) -> int:
    graphs = AttributionClient(client, timeout=args.timeout)
    if args.cancel:
        outcome = graphs.cancel_job(args.key)
        print("cancelled" if outcome.cancelled else f"not cancelled: {outcome.reason}")
        return 0 if outcome.cancelled else 1
    statuses = graphs.watch_job(args.key) if args.watch else [graphs.get_job(args.key)]
    for status in statuses:
        print(json.dumps({k: getattr(status, k) for k in status.__dataclass_fields__}))
    return 0


def _attribute(client: object, args: argparse.Namespace) -> int:
    if not _has_output(args):
        return 2
    if args.request_id and args.token_index is None:
        print("error: --request-id needs --token-index", file=sys.stderr)
        return 2
    settings = _settings(args, [*args.target_token, *(_pair(c) for c in args.contrast)])
    token_ids = [int(t) for t in args.token_ids.split(",")] if args.token_ids else None
    progress = _Progress(sys.stderr)
    result = AttributionClient(client, timeout=args.timeout).attribute(
        args.prompt,
        settings,
        prompt_token_ids=token_ids,
        request_id=args.request_id,
        token_index=args.token_index,
        background=args.background,
        on_event=progress,
        timeout=args.timeout,
        messages=args.message,
        output="both" if args.proto_out else "json",
    )
    progress.done()
    _write(result, args)
    print(result.key)
    return 0


def _graph(client: object, args: argparse.Namespace) -> int:
    if not _has_output(args):
        return 2
    result = AttributionClient(client, timeout=args.timeout).get_graph(
        args.key, output="both" if args.proto_out else "json"
    )
    _write(result, args)
    return 0


def _has_output(args: argparse.Namespace) -> bool:
    if args.out or args.html or args.proto_out:
        return True
    print("error: give --out FILE (graph JSON), --html FILE (graph view) or --proto-out FILE", file=sys.stderr)
    return False


def _write(result: GraphResult, args: argparse.Namespace) -> None:
    if args.out:
        result.save_json(args.out)
        print(f"wrote {args.out} ({len(result.frontend_json)} bytes, {result.source})", file=sys.stderr)
    if args.html:
        write_graph_html(result.frontend(), args.html, key=result.key, source=result.source)
        print(f"wrote {args.html} (graph view; open it in a browser)", file=sys.stderr)
    if args.proto_out and result.graph is not None:
        with open(args.proto_out, "wb") as f:
            f.write(result.graph.SerializeToString())


def _pair(text: str) -> tuple[int, int]:
    a, _, b = text.partition(",")
    return int(a), int(b)


class _Progress:
    """One status line, redrawn in place on a terminal (plain lines otherwise)."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._last = ""

    def __call__(self, event: Event) -> None:
        if isinstance(event, Accepted):
            line = f"graph {event.key[:16]}… over {len(event.token_ids)} tokens"
        elif isinstance(event, Queued):
            line = f"queued: position {event.position}"
        elif isinstance(event, Running):
            filled = int(event.fraction * 30)
            if self.tty:
                line = f"{event.phase:<20} [{'#' * filled}{'.' * (30 - filled)}] {event.fraction:4.0%}"
            else:  # a log, not a bar: one line per phase quarter
                line = f"{event.phase}: {int(event.fraction * 4) * 25}%"
        else:
            line = f"done ({event.source})"
        if line == self._last:
            return
        self._last = line
        if self.tty:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


class _Bar:
    """`done/total` as a bar redrawn in place on a terminal, a line per tenth otherwise."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._shown = -1

    def __call__(self, done: int, total: int) -> None:
        if self.tty:
            filled = int(30 * done / max(total, 1))
            self.stream.write(f"\r\033[K[{'#' * filled}{'.' * (30 - filled)}] {done}/{total}")
        elif (tenth := 10 * done // max(total, 1)) != self._shown:
            self._shown = tenth
            self.stream.write(f"{done}/{total}\n")
        self.stream.flush()

    def done(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
