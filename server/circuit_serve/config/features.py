"""Configuration of the features service: labels, watchlist monitoring and request limits.

Flags of `circuit-serve serve` (the only reader of them is this module):

    --labels FILE            feature labels (JSON or YAML: layer, index, label)
    --watchlist FILE         watched features (JSON or YAML: name, layer, index, threshold, action)
    --monitor-all            monitor every generation request, not only those that ask
    --monitor-slots N        columns per layer that requests lend for watched features of their own
    --max-request-watch N    most watched features (rules) one generation request may add
    --steer-workers N        steered generations run at once (their own pool, not attribution's)
    --steer-max-queued N     steered generations waiting for a worker; more -> RESOURCE_EXHAUSTED
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FeaturesConfig:
    labels: Path | None = None
    watchlist: Path | None = None
    monitor_all: bool = False  # monitor every generation request (needs a watchlist)
    monitor_slots: int = 16  # per layer: in-engine columns for features that requests add (0: none)
    max_request_watch: int = 8  # most watched features one generation request may add
    max_top_k: int = 64  # largest FeatureActivations top_k
    max_listed_features: int = 256  # most features one FeatureActivations call may list
    max_steer_new_tokens: int = 256  # largest Steer max_new_tokens
    max_interventions: int = 64  # most interventions in one Steer call
    max_prompt_tokens: int = 512  # FeatureActivations input length (BOS included)
    steer_workers: int = 1  # steered generations run at once
    steer_max_queued: int = 8  # steered generations waiting for a worker; more -> RESOURCE_EXHAUSTED

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("features (needs --transcoders)")
        g.add_argument("--labels", type=Path, default=None, help="feature labels file (JSON or YAML)")
        g.add_argument("--watchlist", type=Path, default=None, help="watched features file (JSON or YAML)")
        g.add_argument("--monitor-all", action="store_true", help="monitor every generation request")
        g.add_argument("--monitor-slots", type=int, default=16,
                       help="per layer, how many features requests may add to in-engine monitoring at once "
                            "(default %(default)s)")
        g.add_argument("--max-request-watch", type=int, default=8,
                       help="most watched features one generation request may add (default %(default)s)")
        g.add_argument("--max-steer-new-tokens", type=int, default=256)
        d = FeaturesConfig
        g.add_argument("--features-max-top-k", type=int, default=d.max_top_k, help="largest FeatureActivations top_k")
        g.add_argument("--features-max-listed", type=int, default=d.max_listed_features,
                       help="most features one FeatureActivations call may list")
        g.add_argument("--features-max-prompt-tokens", type=int, default=d.max_prompt_tokens,
                       help="FeatureActivations input length, BOS included (default %(default)s)")
        g.add_argument("--max-interventions", type=int, default=d.max_interventions,
                       help="most interventions in one Steer call")
        g.add_argument("--steer-workers", type=int, default=d.steer_workers,
                       help="steered generations run at once (default %(default)s)")
        g.add_argument("--steer-max-queued", type=int, default=d.steer_max_queued,
                       help="steered generations waiting for a worker; more get RESOURCE_EXHAUSTED "
                            "(default %(default)s)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> FeaturesConfig:
        if args.monitor_slots < 0 or args.max_request_watch < 0:
            raise argparse.ArgumentTypeError("--monitor-slots and --max-request-watch must be >= 0")
        if args.monitor_all and args.watchlist is None:
            raise argparse.ArgumentTypeError("--monitor-all needs --watchlist")
        if args.steer_workers < 1 or args.steer_max_queued < 0:
            raise argparse.ArgumentTypeError("--steer-workers must be >= 1 and --steer-max-queued >= 0")
        return cls(
            labels=args.labels,
            watchlist=args.watchlist,
            monitor_all=args.monitor_all,
            monitor_slots=args.monitor_slots,
            max_request_watch=args.max_request_watch,
            max_steer_new_tokens=args.max_steer_new_tokens,
            max_top_k=args.features_max_top_k,
            max_listed_features=args.features_max_listed,
            max_prompt_tokens=args.features_max_prompt_tokens,
            max_interventions=args.max_interventions,
            steer_workers=args.steer_workers,
            steer_max_queued=args.steer_max_queued,
        )
