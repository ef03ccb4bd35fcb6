"""Flags -> config: the declarations' defaults, units and env vars, and one error line (exit 2) for a
bad value, checked while parsing or after (bounds, cross-field checks)."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

import pytest

from circuit_serve.cli import main
from circuit_serve.config.attribution import AttributionConfig
from circuit_serve.config.features import FeaturesConfig
from circuit_serve.config.limits import InputLimits
from circuit_serve.config.option import OptionError
from circuit_serve.config.security import SecurityConfig
from circuit_serve.config.serve import EngineConfig, ServeConfig

NO_CPU = max(os.sched_getaffinity(0)) + 1  # a CPU this process may not run on


def serve_config(*argv: str) -> ServeConfig:
    parser = argparse.ArgumentParser()
    ServeConfig.add_arguments(parser)
    return ServeConfig.from_args(parser.parse_args(["--model", "/m", *argv]))


def error_line(capsys, argv: list[str]) -> str:
    """The one stderr line of `circuit-serve ARGV`, which must exit with status 2."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


def test_no_flags_give_the_dataclass_defaults():
    config = serve_config()
    assert config.engine == EngineConfig(model=Path("/m"))
    assert dataclasses.replace(config.attribution, identity_cache=None) == AttributionConfig()
    assert (config.features, config.security, config.limits) == (FeaturesConfig(), SecurityConfig(), InputLimits())
    assert dataclasses.replace(
        config, engine=EngineConfig(model=Path("/m")), attribution=AttributionConfig()
    ) == ServeConfig(engine=EngineConfig(model=Path("/m")))


def test_units_negations_and_lists():
    config = serve_config(
        "--attribution-memory-budget-gib",
        "0.5",
        "--attribution-result-chunk-kib",
        "100",
        "--graph-cache-max-entry-mib",
        "2",
        "--eager-decoders",
        "--engine-arg",
        "a=1",
        "--engine-arg",
        "b=x",
        "--reflection",
        "off",
        "--engine-core-cpus",
        f"0-{NO_CPU - 1}",
    )
    assert config.engine.engine_core_cpus == frozenset(range(NO_CPU))
    assert config.attribution.memory_budget_bytes == 1 << 29
    assert config.attribution.result_chunk_bytes == 100 << 10
    assert config.attribution.cache_max_entry_bytes == 2 << 20
    assert config.attribution.lazy_decoders is False
    assert config.engine.extra == {"a": 1, "b": "x"}
    assert config.security.reflection == "off"


def test_env_vars_are_the_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("CIRCUIT_MODEL", "/env-model")
    monkeypatch.setenv("CIRCUIT_REDIS_URL", "redis://r:1/0")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "3")
    parser = argparse.ArgumentParser()
    ServeConfig.add_arguments(parser)
    config = ServeConfig.from_args(parser.parse_args([]))  # --model is not required when CIRCUIT_MODEL is set
    assert config.engine.model == Path("/env-model") and config.engine.kv_cache_gib == 3.0
    assert config.attribution.redis_url == "redis://r:1/0"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-stop-strings", "0"], "--max-stop-strings must be >= 1, got 0"),
        (["--max-intervention-positions", "0"], "--max-intervention-positions must be >= 1, got 0"),
        (
            ["--max-attribution-targets", "5"],
            "--max-attribution-targets must be >= 10 (the default max_n_logits), got 5",
        ),
        (["--attribution-result-chunk-kib", "5000"], "--attribution-result-chunk-kib must be in [1, 4080], got 5000"),
        (["--attribution-workers", "0"], "--attribution-workers must be >= 1, got 0"),
        (["--monitor-slots", "-1"], "--monitor-slots must be >= 0, got -1"),
        (["--monitor-all"], "--monitor-all needs --watchlist"),
        (["--log-level", "loud"], "--log-level must be DEBUG, INFO, WARNING or ERROR, got 'loud'"),
    ],
)
def test_bad_values_name_the_flag(argv, message):
    with pytest.raises(OptionError) as exc:
        serve_config(*argv)
    assert str(exc.value) == message


def test_direct_construction_is_checked_by_the_same_declarations():
    with pytest.raises(OptionError, match="--max-stop-chars must be >= 1, got 0"):
        InputLimits(max_stop_chars=0).validate()
    with pytest.raises(OptionError, match="--attribution-result-chunk-kib must be in"):
        AttributionConfig(result_chunk_bytes=0).validate()


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["serve", "--model", "/m", "--max-stop-strings", "0"],
            "circuit-serve serve: error: argument --max-stop-strings: must be >= 1, got 0",
        ),
        (
            ["serve", "--model", "/m", "--max-stop-strings", "x"],
            "circuit-serve serve: error: argument --max-stop-strings: invalid int value: 'x'",
        ),
        (
            ["serve", "--model", "/m", "--tls-key", "/k"],
            "circuit-serve serve: error: argument --tls-key: needs --tls-cert: give --tls-cert and --tls-key together",
        ),
        (
            ["serve", "--model", "/m", "--engine-core-cpus", "0-x"],
            "circuit-serve serve: error: argument --engine-core-cpus: expected CPU numbers and ranges such as 0 or "
            "0-3,8, got '0-x'",
        ),
        (
            ["serve", "--model", "/m", "--engine-core-cpus", f"0,{NO_CPU}"],
            f"circuit-serve serve: error: argument --engine-core-cpus: CPUs [{NO_CPU}] are not among this "
            f"process's CPUs {sorted(os.sched_getaffinity(0))}",
        ),
        (
            ["serve", "--model", "/m", "--engine-arg", "nokey"],
            "circuit-serve serve: error: argument --engine-arg: expects KEY=VALUE, got 'nokey'",
        ),
        (
            ["memory-plan", "--model", "/m", "--card-gib", "80", "--max-interventions", "0"],
            "circuit-serve memory-plan: error: argument --max-interventions: must be >= 1, got 0",
        ),
        (
            ["attribute", "--model", "/m", "--transcoders", "/t", "--prompt", "hi"],
            "circuit-serve attribute: error: argument --out: give --out FILE (graph JSON) and/or --html FILE (graph view)",
        ),
        (
            ["attribute", "--model", "/m", "--transcoders", "/t", "--token-ids", "1,x", "--out", "g.json"],
            "circuit-serve attribute: error: argument --token-ids: expected comma- or space-separated token ids, got '1,x'",
        ),
        (
            ["attribute", "--model", "/m", "--transcoders", "/t", "--message", "hello", "--out", "g.json"],
            "circuit-serve attribute: error: argument --message: expected ROLE:CONTENT (e.g. 'user:Hello'), got 'hello'",
        ),
    ],
)
def test_the_cli_prints_one_error_line_and_exits_2(capsys, argv, line):
    assert error_line(capsys, argv) == line
