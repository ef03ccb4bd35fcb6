"""One declaration per option: a dataclass field whose metadata holds the flag, the help, the
environment variable, the bounds and the `circuit.v1.Limits` name (the pattern of vLLM's config
classes, with stdlib argparse; server/docs/configuration.md says why).

From that one declaration come:

1. the command-line flag (`Options.add_arguments`: type, default, help with the default, env, bounds);
2. the field's value (`Options.from_args`: the flag's value times the declared unit, e.g. GiB -> bytes);
3. the bound checks and their messages (`Options.validate`: `--flag must be >= 1, got 0`);
4. `ModelInfo.limits` and server/docs/limits.md (`config/describe.py`, through `Option.limits`).

A bad value ends as one error line, argparse's style, exit status 2: the parse-time ones through
`OptionParser.error`, the ones found after parsing (bounds, cross-field checks) as `OptionError`
raised by `from_args` and turned into that line by `usage_error` (`build`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

_MISSING = dataclasses.MISSING


@dataclass(frozen=True)
class Option:
    """How one config field is set from the command line (and, where documented, the environment)."""

    flag: str  # e.g. "--max-stop-strings"; the argparse dest is the flag's name with "_"
    help: str = ""
    type: Callable[[str], Any] | None = None  # argparse type; default: the type of the default value
    env: str | None = None  # an environment variable that supplies the default
    required: bool = False  # required unless `env` is set
    choices: tuple[str, ...] | None = None
    unit: int = 1  # field value = flag value * unit (bytes from the flag's KiB, MiB or GiB)
    unit_name: str = ""  # "KiB", "MiB", "GiB": shown after the default
    ge: float | None = None  # bounds on the flag's value (in its unit)
    gt: float | None = None
    le: float | None = None
    why: str = ""  # said after a bound in its message, e.g. "the default max_n_logits"
    negate: bool = False  # a store_true flag that sets the field to False (--eager-decoders)
    action: str | None = None  # "store_true", "append"
    metavar: str | None = None
    group: str | None = None  # argparse group title; default: the class's `group`
    limits: tuple[str, ...] = ()  # the `circuit.v1.Limits` fields this option sets (ModelInfo)
    convert: Callable[[Any], Any] | None = None  # flag value -> field value (after `unit`)

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    def bounds(self) -> str:
        """`>= 1`, `in [1, 4080]`, `> 0` or "" (as the docs table and the messages say it)."""
        if self.ge is not None and self.le is not None:
            return f"in [{self.ge:g}, {self.le:g}]"
        parts = [
            f">= {self.ge:g}" if self.ge is not None else "",
            f"> {self.gt:g}" if self.gt is not None else "",
            f"<= {self.le:g}" if self.le is not None else "",
        ]
        return ", ".join(p for p in parts if p)

    def check(self, value: Any) -> None:
        """Raises OptionError when the flag's value is outside the declared bounds or choices."""
        if value is None or isinstance(value, bool):
            return
        if self.choices is not None and str(value) not in self.choices:
            raise OptionError(self.flag, f"must be one of {', '.join(self.choices)}, got {value!r}")
        if not isinstance(value, int | float):
            return
        low_ok = (self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
        if not (low_ok and (self.le is None or value <= self.le)):
            why = f" ({self.why})" if self.why else ""
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            raise OptionError(self.flag, f"must be {self.bounds()}{why}, got {shown}")


def option(default: Any = _MISSING, *, default_factory: Any = _MISSING, **spec: Any) -> Any:
    """A dataclass field declared as a command-line option: `option(16, flag="--max-stop-strings", ge=1)`."""
    return declared(Option(**spec), default, default_factory=default_factory)


def declared(opt: Option, default: Any = _MISSING, *, default_factory: Any = _MISSING) -> Any:
    """A dataclass field set by `opt` (an Option shared by two commands, such as `--model`)."""
    if default_factory is not _MISSING:
        return field(default_factory=default_factory, metadata={"option": opt})
    if default is _MISSING:
        return field(metadata={"option": opt})
    return field(default=default, metadata={"option": opt})


class OptionError(ValueError):
    """A flag's value is wrong: `str()` is `--flag detail` (what `validate` callers see), `usage` is
    argparse's `argument --flag: detail`."""

    def __init__(self, flag: str, detail: str) -> None:
        super().__init__(f"{flag} {detail}")
        self.flag, self.detail = flag, detail

    @property
    def usage(self) -> str:
        return f"argument {self.flag}: {self.detail}"


class UsageExit(SystemExit):
    """Exit status 2 after the one error line; `str()` is that line."""

    def __init__(self, line: str) -> None:
        super().__init__(2)
        self.line = line

    def __str__(self) -> str:
        return self.line


def usage_error(prog: str, message: str) -> UsageExit:
    """Prints `PROG: error: MESSAGE` (one line, as argparse does, without the usage) and returns the exit."""
    line = f"{prog}: error: {message}"
    print(line, file=sys.stderr)
    return UsageExit(line)


class OptionParser(argparse.ArgumentParser):
    """argparse with one error line (the usage of `serve` is 60 lines; `--help` shows it)."""

    def error(self, message: str):
        raise usage_error(self.prog, message)


def command_parser(subparsers: argparse._SubParsersAction, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand's parser; `args.prog` names it in the errors `build` reports."""
    parser = subparsers.add_parser(name, **kwargs)
    parser.set_defaults(prog=parser.prog)
    return parser


def build(make: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> Any:
    """`make(args)` (a `from_args`), with an OptionError turned into the command's one error line."""
    try:
        return make(args)
    except OptionError as exc:
        raise usage_error(getattr(args, "prog", "circuit-serve"), exc.usage) from None


def options(cls: type) -> Iterator[tuple[dataclasses.Field, Option]]:
    """The declared fields of a config dataclass, in declaration order."""
    for f in dataclasses.fields(cls):
        if "option" in f.metadata:
            yield f, f.metadata["option"]


def walk(cls: type) -> Iterator[tuple[type, dataclasses.Field, Option]]:
    """Every declared option of a config class and of its sections (ServeConfig: all of `serve`)."""
    for f, opt in options(cls):
        yield cls, f, opt
    for section in getattr(cls, "sections", {}).values():
        yield from walk(section)


def declared_default(f: dataclasses.Field, opt: Option) -> str:
    """The declared default as the docs show it, in the flag's unit ("" when there is none)."""
    default = f.default if f.default is not _MISSING else None
    if default is None or opt.negate or opt.action:
        return ""
    default = getattr(default, "value", default)
    if opt.unit != 1:
        return f"{default / opt.unit:g} {opt.unit_name}"
    return f"{default:g}" if isinstance(default, float) else str(default)


def flag_default(f: dataclasses.Field, opt: Option) -> Any:
    """The flag's default, in the flag's unit: the environment's value, else the field's default."""
    if opt.env and os.environ.get(opt.env):
        raw = os.environ[opt.env]
        return (opt.type or str)(raw)
    if opt.action == "append":
        return []
    default = f.default if f.default is not _MISSING else None
    if opt.negate:
        return False
    if default is None or opt.unit == 1:
        return getattr(default, "value", default)  # an Enum's value
    value = default / opt.unit
    return int(value) if opt.type is int else value


def help_text(f: dataclasses.Field, opt: Option) -> str:
    """The help: the declared text, then (the default in force; the bounds; the env var)."""
    notes = []
    default = flag_default(f, opt)
    if opt.action is None and not opt.negate and default is not None and default != "":
        notes.append(f"default %(default)s{' ' + opt.unit_name if opt.unit_name else ''}")
    if opt.bounds():
        notes.append(opt.bounds())
    if opt.env:
        notes.append(f"env {opt.env}")
    text = opt.help.replace("%", "%%")
    return " ".join(p for p in (text, f"({'; '.join(notes)})" if notes else "") if p)


def add_option(group: Any, f: dataclasses.Field, opt: Option) -> None:
    kwargs: dict[str, Any] = {"dest": opt.dest, "help": help_text(f, opt)}
    if opt.action == "store_true" or opt.negate:
        kwargs["action"] = "store_true"
    else:
        default = flag_default(f, opt)
        kwargs["default"] = default
        if opt.action:
            kwargs["action"] = opt.action
        kwargs["type"] = opt.type or (type(default) if default is not None else str)
        if opt.choices:
            kwargs["choices"] = opt.choices
        if opt.required and not (opt.env and os.environ.get(opt.env)):
            kwargs["required"] = True
        if opt.metavar:
            kwargs["metavar"] = opt.metavar
    group.add_argument(opt.flag, **kwargs)


def field_value(f: dataclasses.Field, opt: Option, value: Any) -> Any:
    """The flag's parsed value -> the field's value (an empty value of a field that may be None: None)."""
    if opt.negate:
        return not value
    if value is None or (value == "" and f.default is None):
        return None
    if opt.unit != 1:
        value = int(value * opt.unit)
    return opt.convert(value) if opt.convert else value


class Options:
    """Mixin of the config dataclasses: flags, values and checks from the fields' declarations.

    `group` titles the class's argparse group; `sections` names nested config classes whose flags
    follow (ServeConfig: engine, attribution, ...)."""

    group: ClassVar[str] = ""
    sections: ClassVar[dict[str, type]] = {}

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        groups: dict[str, Any] = {}
        for f, opt in options(cls):
            title = opt.group or cls.group
            if title not in groups:
                groups[title] = parser.add_argument_group(title) if title else parser
            add_option(groups[title], f, opt)
        for section in cls.sections.values():
            section.add_arguments(parser)

    @classmethod
    def values_from_args(cls, args: argparse.Namespace) -> dict[str, Any]:
        values = {f.name: field_value(f, opt, getattr(args, opt.dest)) for f, opt in options(cls)}
        values.update({name: section.from_args(args) for name, section in cls.sections.items()})
        return values

    @classmethod
    def from_args(cls, args: argparse.Namespace):
        config = cls(**cls.values_from_args(args))
        config.validate()
        return config

    def validate(self) -> None:
        """The declared bounds (on the flag's value), then the class's cross-field `check`."""
        for f, opt in options(type(self)):
            value = getattr(self, f.name)
            if opt.negate or value is None:
                continue
            opt.check(value / opt.unit if opt.unit != 1 else getattr(value, "value", value))
        self.check()

    def check(self) -> None:
        """Cross-field checks; raise OptionError naming the flag to change."""
