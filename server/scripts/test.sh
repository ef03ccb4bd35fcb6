#!/usr/bin/env bash
# Install (once), then run the whole test suite (tests start their own servers and Redis).
set -euo pipefail
cd "$(dirname "$0")/../.."
server/scripts/setup.sh
server/scripts/tools.sh   # helm, kubectl, promtool, hadolint, kubernetes-validate, chromium; once
export PATH="$PWD/.tools/bin:$PATH"
exec .venv/bin/python -m pytest -q "$@"
