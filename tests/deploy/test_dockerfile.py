"""The Dockerfile lints clean (warning threshold) and keeps the install steps .ci/run exercises."""

from __future__ import annotations

from tests.deploy.chart_tools import REPO, find_tool, run


def test_hadolint():
    done = run([find_tool("hadolint"), "--failure-threshold", "warning", str(REPO / "Dockerfile")])
    assert done.returncode == 0, done.stdout + done.stderr


def test_same_install_script_as_ci():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "server/scripts/setup.sh" in dockerfile
    assert "server/scripts/setup.sh" in (REPO / ".ci" / "run").read_text()
    assert "USER 10001" in dockerfile and "--uid 10001" in dockerfile
