#!/usr/bin/env bash
# Lint and format check of the whole tree (ruff, pinned in the dev extra; config in pyproject.toml).
# Fix with: .venv/bin/ruff check --fix . && .venv/bin/ruff format .
set -euo pipefail
cd "$(dirname "$0")/../.."
[[ -x .venv/bin/ruff ]] || server/scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
