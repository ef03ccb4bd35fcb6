"""Reports the graph view's measured times at the end of the run (they are results, not checks)."""

from __future__ import annotations

from tests.graph_view.browser import RENDER_TIMES


def pytest_terminal_summary(terminalreporter):
    if RENDER_TIMES:
        terminalreporter.section("graph view: time to first render")
        for line in RENDER_TIMES:
            terminalreporter.write_line(line)
