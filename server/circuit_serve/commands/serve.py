"""`circuit-serve serve`: the gRPC server (generation + health + reflection) and /metrics."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Coroutine
from typing import Any

from circuit_serve.config.option import build, command_parser
from circuit_serve.config.serve import ServeConfig


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = command_parser(subparsers, "serve", help="serve a model over gRPC", description=__doc__)
    ServeConfig.add_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from circuit_serve.app import serve
    from circuit_serve.attribution.loading import PlanRefused
    from circuit_serve.features.files import FeatureFileError
    from circuit_serve.generation.vllm_version import UntestedVllm

    config = build(ServeConfig.from_args, args)
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return _event_loop_runner()(serve(config))
    except FeatureFileError as exc:  # a bad --labels/--watchlist file: say which entry and field
        logging.getLogger("circuit_serve").error("cannot start: %s", exc)
        return 2
    except UntestedVllm as exc:
        logging.getLogger("circuit_serve").error("cannot start: %s", exc)
        return 2
    except PlanRefused as exc:  # model + transcoders + attribution budget do not fit on the GPU
        logging.getLogger("circuit_serve").error("cannot start: the GPU memory plan does not fit: %s", exc)
        return 2


def _event_loop_runner() -> Callable[[Coroutine[Any, Any, int]], int]:
    """uvloop's runner when installed (vLLM depends on it and serves gRPC on it), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        import asyncio

        return asyncio.run
    return uvloop.run
