"""The declarations are the one source: `serve --help`, server/docs/limits.md, ModelInfo.limits, the
proto's comments and every message that names a flag agree with them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from circuit_serve.config.describe import DERIVED, describe_limits, limits_markdown
from circuit_serve.config.option import walk
from circuit_serve.config.serve import EngineConfig, ServeConfig
from tests.config.flags import all_flags, limits_fields, subcommand_parsers

ROOT = Path(__file__).resolve().parents[2]
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*[a-z0-9]")


def help_entries(text: str) -> dict[str, str]:
    """`--flag` -> its whole entry in `--help` (the invocation and the help, on one line)."""
    entries: dict[str, str] = {}
    flag = None
    for line in text.splitlines():
        if line.startswith("  -"):
            flag = line.split()[0].rstrip(",")
            entries[flag] = line.strip()
        elif flag and line.startswith("    "):
            entries[flag] += " " + line.strip()
        else:
            flag = None
    return entries


def test_serve_help_lists_every_declared_flag_with_its_default(monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one line per option
    for var in ("CIRCUIT_MODEL", "CIRCUIT_TRANSCODERS", "CIRCUIT_REDIS_URL", "VLLM_CPU_KVCACHE_SPACE"):
        monkeypatch.delenv(var, raising=False)
    for command in ("serve", "memory-plan"):
        entries = help_entries(subcommand_parsers()[command].format_help())
        for _cls, f, opt in walk(ServeConfig):
            line = entries.get(opt.flag)
            assert line is not None, (command, opt.flag)
            if opt.help:
                assert opt.help.split(";")[0] in line, (opt.flag, line)
            if f.default not in (None, False, True) and not opt.action and isinstance(f.default, int | float | str):
                shown = f.default / opt.unit if opt.unit != 1 else getattr(f.default, "value", f.default)
                shown = int(shown) if opt.type is int else shown
                assert f"default {shown}" in line, (opt.flag, line)
            if opt.bounds():
                assert opt.bounds() in line, (opt.flag, line)
            if opt.env:
                assert f"env {opt.env}" in line, (opt.flag, line)


def test_every_flag_a_message_names_exists():
    known = all_flags()
    unknown = []
    for path in sorted((ROOT / "server" / "circuit_serve").rglob("*.py")):
        if "testing" in path.parts:  # helpers that start other programs (redis-server) with their flags
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                unknown += [
                    (path.name, node.lineno, flag)
                    for flag in FLAG.findall(node.value)
                    if flag not in known and flag != "--flag"
                ]  # option.py's placeholder
    assert not unknown


def test_the_limits_doc_is_current():
    committed = (ROOT / "server" / "docs" / "limits.md").read_text()
    assert committed == limits_markdown(), "run: python -m circuit_serve.config.describe > server/docs/limits.md"


def test_model_info_limits_come_from_the_declarations_and_cover_the_proto():
    config = ServeConfig(engine=EngineConfig(model=Path("/m")))
    limits = describe_limits(config, max_model_len=64, vocab_size=100)
    assert set(limits) == set(limits_fields()), "a circuit.v1.Limits field has no declaration"
    declared = [name for _cls, _f, opt in walk(ServeConfig) for name in opt.limits]
    assert len(declared) == len(set(declared)) and not set(declared) & set(DERIVED)
    assert limits["generation_max_stop_strings"] == 16 and limits["steer_max_positions"] == 1024
    assert limits["attribution_memory_budget_bytes"] == 8 << 30 and limits["generation_max_prompt_tokens"] == 63


def test_the_protos_flag_comments_name_the_declared_flags():
    by_limit = {name: opt.flag for _cls, _f, opt in walk(ServeConfig) for name in opt.limits}
    for field, flag in limits_fields().items():
        if flag is not None:
            assert by_limit.get(field, DERIVED.get(field, ("", ""))[1]) == flag, (field, flag)


def test_flags_are_declared_once_per_command():
    for name, parser in subcommand_parsers().items():
        flags = [s for a in parser._actions for s in a.option_strings]
        assert len(flags) == len(set(flags)), name
