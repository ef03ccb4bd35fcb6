"""Configuration of the features service: labels, watchlist monitoring and request limits.

Each field is declared once (config/option.py): its flag of `circuit-serve serve`, default, bound and
`circuit.v1.Limits` name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from circuit_serve.config.option import OptionError, Options, option


@dataclass(frozen=True)
class FeaturesConfig(Options):
    group: ClassVar[str] = "features (needs --transcoders)"

    labels: Path | None = option(
        None, flag="--labels", type=Path, help="feature labels file (JSON or YAML: layer, index, label)"
    )
    watchlist: Path | None = option(
        None,
        flag="--watchlist",
        type=Path,
        help="watched features file (JSON or YAML: name, layer, index, threshold, action)",
    )
    steering: Path | None = option(
        None,
        flag="--steering",
        type=Path,
        help="steering presets file (YAML or JSON: name, interventions): requests name them (steering_preset)",
    )
    steering_default: str | None = option(
        None,
        flag="--steering-default",
        type=str,
        help="preset of --steering applied to every generation request (skipping it needs the steer scope)",
    )
    monitor_all: bool = option(
        False,
        flag="--monitor-all",
        action="store_true",
        help="monitor every generation request, not only those that ask (needs --watchlist)",
    )
    monitor_slots: int = option(
        16,
        flag="--monitor-slots",
        ge=0,
        help="per layer, how many features requests may add to in-engine monitoring at once (0: none)",
    )
    monitor_cache_mib: int = option(
        64,
        flag="--monitor-cache-mib",
        ge=0,
        help="host memory for the watched values of cached prompt blocks, so monitored requests reuse "
        "vLLM's prefix cache (0: monitored requests reuse no cached prefix)",
    )
    max_request_watch: int = option(
        8, flag="--max-request-watch", ge=0, help="most watched features one generation request may add"
    )
    max_steer_new_tokens: int = option(
        256, flag="--max-steer-new-tokens", ge=1, limits=("steer_max_new_tokens",), help="largest Steer max_new_tokens"
    )
    max_top_k: int = option(
        64, flag="--features-max-top-k", ge=1, limits=("features_max_top_k",), help="largest FeatureActivations top_k"
    )
    max_listed_features: int = option(
        256,
        flag="--features-max-listed",
        ge=1,
        limits=("features_max_listed",),
        help="most features one FeatureActivations call may list",
    )
    max_prompt_tokens: int = option(
        512,
        flag="--features-max-prompt-tokens",
        ge=1,
        limits=("features_max_prompt_tokens",),
        help="FeatureActivations input length, BOS included",
    )
    max_interventions: int = option(
        64,
        flag="--max-interventions",
        ge=1,
        limits=("steer_max_interventions",),
        help="most interventions in one Steer call or one Generate request",
    )
    steer_workers: int = option(
        1, flag="--steer-workers", ge=1, help="steered generations run at once (their own pool, not attribution's)"
    )
    steer_max_queued: int = option(
        8, flag="--steer-max-queued", ge=0, help="steered generations waiting for a worker; more get RESOURCE_EXHAUSTED"
    )

    def check(self) -> None:
        if self.monitor_all and self.watchlist is None:
            raise OptionError("--monitor-all", "needs --watchlist")
        if self.steering_default is not None and self.steering is None:
            raise OptionError("--steering-default", "needs --steering (the presets file it names a preset of)")
