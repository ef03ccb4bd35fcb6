"""Real headless Chromium (Debian's `chromium` package) driven by Playwright, for the graph-view tests.

Without /usr/bin/chromium the tests fail (they do not skip): `.ci/run` installs it when missing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1400, "height": 900}
RENDER_TIMES: list[str] = []  # lines for the end-of-run summary (conftest.py)


def launch(playwright):
    """A Chromium browser; fails the test when the system browser is missing."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (`apt-get install -y chromium`; .ci/run does)")
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
