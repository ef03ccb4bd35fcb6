#!/usr/bin/env bash
# Install (once), then run the whole test suite (tests start their own servers and Redis).
set -euo pipefail
cd "$(dirname "$0")/../.."
server/scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
