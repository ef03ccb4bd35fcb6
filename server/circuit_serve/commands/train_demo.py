"""`circuit-serve train-demo OUT_DIR`: train the demo model, its transcoders and labels from scratch.

Runs the whole pipeline of `circuit_serve.demo.pipeline` (10-12 minutes on one thread of a shared
2-core machine) and prints the manifest's measured numbers. The committed demo assets were made with
`circuit-serve train-demo server/circuit_serve/demo/assets`; their labels were last remade with
`circuit-serve train-demo server/circuit_serve/demo/assets --labels-only` (same model and transcoders).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

_REPORTED = (
    "heldout_sentence_accuracy",
    "heldout_template_accuracy",
    "far_template_accuracy",
    "transcoder_fvu",
    "transcoder_l0",
    "circuit_recovery_rate",
    "ablation_dependence_rate",
    "ablation_control_rate",
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train-demo", help="train the demo model + transcoders", description=__doc__)
    parser.add_argument("out_dir", type=Path, help="directory to write (replaced if it exists)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-circuit", action="store_true", help="skip the attribution-graph circuit check")
    parser.add_argument(
        "--circuit-only", action="store_true", help="only (re)measure the circuit rates of an existing OUT_DIR"
    )
    parser.add_argument(
        "--labels-only",
        action="store_true",
        help="only (re)label the features of an existing OUT_DIR's model and transcoders (seconds, no training)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from circuit_serve.demo.pipeline import add_circuit_rates, relabel, run_pipeline

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.labels_only:
        manifest = relabel(args.out_dir)
    elif args.circuit_only:
        manifest = add_circuit_rates(args.out_dir)
    else:
        manifest = run_pipeline(args.out_dir, seed=args.seed, circuit=not args.no_circuit)
    print(json.dumps({k: manifest[k] for k in _REPORTED} | {"timings": manifest["timings"]}, indent=1))
    return 0
