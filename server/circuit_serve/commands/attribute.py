"""`circuit-serve attribute`: one attribution graph, offline, to a frontend JSON, an HTML view (and .npz).

circuit-serve attribute --model DIR --transcoders DIR --prompt "The capital of France is"
    --out graph.json [--html graph.html] [--npz full.npz] [--max-feature-nodes N] [--device cuda] ...
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from circuit_serve.config.option import build, command_parser, options
from circuit_serve.config.tracing import AttributeCommandConfig, SettingsFlags
from circuit_serve.domain.errors import CircuitError, InvalidRequest


def add_parser(subparsers) -> None:
    parser = command_parser(
        subparsers,
        "attribute",
        help="compute one attribution graph offline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    AttributeCommandConfig.add_arguments(parser)
    parser.set_defaults(run=run)


class _Bar:
    """A one-line progress bar on stderr (only when it is a terminal)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.last = 0.0

    def __call__(self, phase: str, fraction: float) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.1 and fraction < 1.0):
            return
        self.last = now
        width = 30
        done = int(width * max(0.0, min(1.0, fraction)))
        sys.stderr.write(f"\r{phase:<16} [{'#' * done}{'.' * (width - done)}] {100 * fraction:5.1f}%")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def _labels(path) -> dict[tuple[int, int], str]:
    if path is None:
        return {}
    entries = json.loads(path.read_text())
    entries = entries.get("labels", entries) if isinstance(entries, dict) else entries
    return {(int(e["layer"]), int(e["index"])): str(e["label"]) for e in entries}


def run(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from circuit_client.graph_html import write_graph_html
    from circuit_serve.tracing import ReplacementModel

    hf_logging.disable_progress_bar()

    cfg = build(AttributeCommandConfig.from_args, args)
    tc = cfg.tracing
    bar = _Bar(cfg.progress)
    try:
        cfg.settings.validate()
    except InvalidRequest as e:  # a settings flag out of range: name the flag, as any other bad flag value
        flag = next(opt.flag for f, opt in options(SettingsFlags) if f.name == e.field)
        detail = str(e).removeprefix(f"{e.field}: ")
        print(f"circuit-serve attribute: error: argument {flag}: {detail} (setting {e.field})", file=sys.stderr)
        return 2
    try:
        rm = ReplacementModel.from_pretrained(
            tc.model,
            tc.transcoders,
            dtype=tc.dtype,
            device=tc.device,
            memory_budget_bytes=tc.memory_budget_bytes,
            max_prompt_tokens=tc.max_prompt_tokens,
            identity_cache=cfg.identity_cache,
        )
        s = cfg.settings
        if cfg.messages:
            from circuit_serve.domain.chat import ChatMessage

            given = rm.chat_tokens([ChatMessage(r, c) for r, c in cfg.messages])
        else:
            given = cfg.prompt if cfg.prompt is not None else cfg.token_ids
        graph = rm.attribute(
            given,
            max_n_logits=s.max_n_logits,
            desired_logit_prob=s.desired_logit_prob,
            max_feature_nodes=s.max_feature_nodes,
            batch_size=s.batch_size,
            node_threshold=s.node_threshold,
            edge_threshold=s.edge_threshold,
            targets=cfg.targets or None,
            progress=bar,
        )
        bar.close()
        js = graph.to_frontend_json(slug=cfg.slug, labels=_labels(cfg.labels))
    except CircuitError as e:
        bar.close()
        print(f"circuit-serve attribute: {e}", file=sys.stderr)
        return 2
    if cfg.out is not None:
        cfg.out.parent.mkdir(parents=True, exist_ok=True)
        cfg.out.write_text(json.dumps(js))
    if cfg.html is not None:
        write_graph_html(js, cfg.html, source="offline")  # no cache key: computed here, not by a server
    if cfg.npz is not None:
        cfg.npz.parent.mkdir(parents=True, exist_ok=True)
        graph.save_npz(cfg.npz)
    rep, comp = graph.scores()
    total = sum(graph.timings.values())
    print(
        f"{graph.n_pos} tokens, {graph.n_active} active features, {graph.n_selected} selected, "
        f"{graph.n_logits} logits; kept {len(js['nodes'])} nodes, {len(js['links'])} edges; "
        f"replacement {rep:.3f}, completeness {comp:.3f}; {total:.2f}s -> "
        + ", ".join(str(p) for p in (cfg.out, cfg.html) if p is not None)
    )
    return 0
