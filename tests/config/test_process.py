"""The real console entry: a bad flag value is one line on stderr, exit status 2, no traceback."""

from __future__ import annotations

import subprocess
import sys


def test_serve_with_a_bad_value_prints_one_line():
    r = subprocess.run(
        [sys.executable, "-m", "circuit_serve.cli", "serve", "--model", "/m", "--max-stop-strings", "0"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert r.stderr.splitlines() == ["circuit-serve serve: error: argument --max-stop-strings: must be >= 1, got 0"]
