"""Deployment tests: the Helm chart, the alert rules and the dashboard, the Dockerfile lint.

    def test_x(render):                  # helm template over one ci/ values file
        docs = render("default-values.yaml")        # list of rendered objects (dicts)
    def test_y(tool):
        subprocess.run([tool("promtool"), "check", "rules", ...])

Tools come from PATH or .tools/bin (server/scripts/tools.sh installs them); a missing one fails.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

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


@pytest.fixture(scope="session")
def tool() -> Callable[[str], str]:
    return find_tool


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kwargs)


def helm_template(values: Path, *extra: str) -> subprocess.CompletedProcess:
    return run(
        [find_tool("helm"), "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "-f", str(values), *extra]
    )


@pytest.fixture(scope="session")
def render() -> Callable[..., list[dict]]:
    """Render the chart with one ci/ values file (plus --set flags); the objects, in order."""
    cache: dict[tuple, list[dict]] = {}

    def _render(values_name: str, *extra: str) -> list[dict]:
        key = (values_name, *extra)
        if key not in cache:
            done = helm_template(CHART / "ci" / values_name, *extra)
            assert done.returncode == 0, done.stderr
            cache[key] = [d for d in yaml.safe_load_all(done.stdout) if d]
        return cache[key]

    return _render


def only(docs: list[dict], kind: str, name_suffix: str = "") -> dict:
    """The one rendered object of this kind (whose name ends with name_suffix)."""
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"{len(found)} {kind} objects named *{name_suffix}"
    return found[0]
