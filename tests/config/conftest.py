"""The config tests compare parsed flags with the declared defaults, so no declared environment
variable of the machine running them (CI exports VLLM_CPU_KVCACHE_SPACE) may supply a default."""

from __future__ import annotations

import dataclasses

import pytest

from circuit_serve.cli import build_parser
from circuit_serve.config.option import Options, options


def _config_classes(cls: type = Options) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_config_classes(sub)]
    return found


@pytest.fixture(autouse=True)
def no_declared_env(monkeypatch):
    build_parser()  # imports every config class, so each declared option is found below
    for cls in filter(dataclasses.is_dataclass, _config_classes()):
        for _, opt in options(cls):
            if opt.env:
                monkeypatch.delenv(opt.env, raising=False)
