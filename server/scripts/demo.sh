#!/usr/bin/env bash
# Install (once), build the demo model if missing, serve it, stream one generation, print metrics.
set -euo pipefail
cd "$(dirname "$0")/../.."
server/scripts/setup.sh
exec .venv/bin/circuit-serve demo "$@"
