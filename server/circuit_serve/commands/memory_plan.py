"""`circuit-serve memory-plan`: the GPU memory plan `serve` would use, printed without a GPU.

    circuit-serve memory-plan --model google/gemma-2-2b --transcoders mntss/gemma-scope-transcoders --card-gib 80

Takes every `serve` flag (model, transcoders, --dtype, --max-model-len, --attribution-memory-budget-gib,
--attribution-workers, --eager-decoders, ...) plus the card's size; reads only config.json and the
transcoder files' headers. Exit status 0 when it fits, 2 when `serve` would refuse to start.
"""

from __future__ import annotations

import argparse

from circuit_serve.config.option import build, command_parser
from circuit_serve.config.serve import ServeConfig


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = command_parser(
        subparsers,
        "memory-plan",
        help="print the GPU memory plan serve would use",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ServeConfig.add_arguments(parser)
    parser.add_argument("--card-gib", type=float, required=True, help="the GPU's memory in GiB (e.g. 80, 24)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from circuit_serve.attribution.loading import plan_for_serving
    from circuit_serve.domain.errors import CircuitError

    config = build(ServeConfig.from_args, args)
    if config.attribution.transcoders is None:
        print("memory-plan: give --transcoders; without them vLLM keeps its own share of the card", file=sys.stderr)
        return 2
    try:
        plan = plan_for_serving(config, card_bytes=int(args.card_gib * (1 << 30)), device="cuda")
    except CircuitError as exc:
        print(f"memory-plan: {exc}", file=sys.stderr)
        return 2
    assert plan is not None
    print(plan.render())
    return 0 if plan.fits else 2
