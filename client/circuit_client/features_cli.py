"""`circuit features` and `circuit steer`: transcoder features from the terminal.

circuit features --prompt "The capital of France is" --top-k 5
circuit features --prompt "The capital of France is" --feature 2:17 --feature 3:40
circuit steer --prompt "The capital of France is" --intervene 2:17:set:0 --intervene 1:5:scale:3@4,5,gen
"""

from __future__ import annotations

import argparse
import shutil
import sys
import textwrap
from collections.abc import Callable

from circuit_client._convert import parse_message
from circuit_client.features import FeaturesClient, Intervention, PositionActivations

Command = Callable[[object, argparse.Namespace], int]


def _feature(spec: str) -> tuple[int, int]:
    try:
        layer, index = spec.split(":")
        return int(layer), int(index)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LAYER:INDEX, got {spec!r}") from None


def _intervention(spec: str) -> Intervention:
    try:
        return Intervention.parse(spec)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(add: Callable[[str, str], argparse.ArgumentParser]) -> dict[str, Command]:
    """Add the subcommands with `add(name, help)` (which adds --target/--timeout); return name -> handler."""
    f = add("features", "print feature activations per token")
    src = f.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="text (tokenized as generation does, BOS first)")
    src.add_argument("--token-ids", help="comma-separated token ids")
    src.add_argument(
        "--message",
        type=parse_message,
        action="append",
        metavar="ROLE:CONTENT",
        help="a chat message ROLE:CONTENT, rendered with the model's chat template (repeatable)",
    )
    which = f.add_mutually_exclusive_group(required=True)
    which.add_argument("--top-k", type=int, help="the K most active features at each position")
    which.add_argument(
        "--feature",
        type=_feature,
        action="append",
        metavar="L:I",
        help="a feature to show at every position (repeatable)",
    )

    s = add("steer", "generate with feature interventions; print default and steered text side by side")
    ssrc = s.add_mutually_exclusive_group(required=True)
    ssrc.add_argument("--prompt")
    ssrc.add_argument(
        "--message",
        type=parse_message,
        action="append",
        metavar="ROLE:CONTENT",
        help="a chat message ROLE:CONTENT, rendered with the model's chat template (repeatable)",
    )
    s.add_argument(
        "--intervene",
        type=_intervention,
        action="append",
        required=True,
        metavar="L:I:OP:VALUE[@WHERE]",
        help="OP is set, scale or add; WHERE is a comma list of prompt positions (BOS is 0), "
        "`prompt` (every prompt position) and `gen` (every generated token); "
        "default everywhere; repeatable",
    )
    s.add_argument("--max-new-tokens", type=int, default=16)
    s.add_argument("--temperature", type=float, default=0.0)
    s.add_argument("--seed", type=int, default=None)
    return {"features": _features, "steer": _steer}


def _features(client: object, args: argparse.Namespace) -> int:
    ids = [int(t) for t in args.token_ids.split(",")] if args.token_ids else None
    rows = FeaturesClient(client, timeout=args.timeout).activations(
        args.prompt, prompt_token_ids=ids, features=args.feature or (), top_k=args.top_k or 0, messages=args.message
    )
    print(format_table(rows, listed=bool(args.feature)))
    return 0


def format_table(rows: list[PositionActivations], *, listed: bool) -> str:
    """One line per position: position, token, then `L:I=value` (label) entries."""
    lines = []
    if listed and rows:
        names = [f"{v.layer}:{v.index}" + (f" {v.label}" if v.label else "") for v in rows[0].values]
        lines.append("\t".join(["pos", "token", *names]))
        for r in rows:
            lines.append("\t".join([str(r.position), repr(r.token), *(f"{v.activation:.3f}" for v in r.values)]))
        return "\n".join(lines)
    lines.append("pos\ttoken\tfeatures (layer:index=activation)")
    for r in rows:
        cells = [f"{v.layer}:{v.index}={v.activation:.3f}" + (f" ({v.label})" if v.label else "") for v in r.values]
        lines.append("\t".join([str(r.position), repr(r.token), "  ".join(cells) or "-"]))
    return "\n".join(lines)


def _steer(client: object, args: argparse.Namespace) -> int:
    result = FeaturesClient(client, timeout=args.timeout).steer(
        args.prompt,
        args.intervene,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
        include_default=True,
        messages=args.message,
    )
    assert result.default is not None
    print(side_by_side(result.default.text, result.steered.text))
    return 0


def side_by_side(left: str, right: str, *, width: int | None = None) -> str:
    width = width or shutil.get_terminal_size((100, 20)).columns
    col = max(20, (width - 3) // 2)
    a = textwrap.wrap(left, col, replace_whitespace=True, drop_whitespace=False) or [""]
    b = textwrap.wrap(right, col, replace_whitespace=True, drop_whitespace=False) or [""]
    lines = [f"{'default':<{col}} | steered", f"{'-' * col}-+-{'-' * col}"]
    for i in range(max(len(a), len(b))):
        lines.append(f"{a[i] if i < len(a) else '':<{col}} | {b[i] if i < len(b) else ''}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit("use `circuit features` or `circuit steer`")
