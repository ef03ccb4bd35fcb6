"""Helpers of the deployment tests: where the chart is, the tools (PATH or .tools/bin; a missing one
fails the test), `helm template` over a ci/ values file, picking one rendered object."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "server" / "deploy"
CHART = DEPLOY / "helm" / "circuit-serve"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
PASSING = [p for p in CI_VALUES if not p.name.endswith("-fail-values.yaml")]
FAILING = [p for p in CI_VALUES if p.name.endswith("-fail-values.yaml")]
RELEASE = "rel"
NAMESPACE = "ml"


def find_tool(name: str) -> str:
    """The tool's path from PATH, else .tools/bin; fails the test (never skips) when absent."""
    found = shutil.which(name) or shutil.which(name, path=str(REPO / ".tools" / "bin"))
    if found is None:
        pytest.fail(f"{name} not found on PATH or in .tools/bin: run server/scripts/tools.sh")
    return found


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kwargs)


def helm_template(values: Path, *extra: str) -> subprocess.CompletedProcess:
    return run(
        [find_tool("helm"), "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "-f", str(values), *extra]
    )


def only(docs: list[dict], kind: str, name_suffix: str = "") -> dict:
    """The one rendered object of this kind (whose name ends with name_suffix)."""
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"{len(found)} {kind} objects named *{name_suffix}"
    return found[0]
