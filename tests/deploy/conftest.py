"""Deployment tests: the Helm chart, the alert rules and the dashboard, the Dockerfile lint.

    def test_x(render):                  # helm template over one ci/ values file
        docs = render("default-values.yaml")        # list of rendered objects (dicts)
    def test_y(tool):
        subprocess.run([tool("promtool"), "check", "rules", ...])

Tools come from PATH or .tools/bin (server/scripts/tools.sh installs them); a missing one fails.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import yaml

from tests.deploy.chart_tools import CHART, find_tool, helm_template


@pytest.fixture(scope="session")
def tool() -> Callable[[str], str]:
    return find_tool


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
