#!/usr/bin/env bash
# Set up pocketnas on a fresh Debian/Ubuntu machine with Python 3.10+ and no GPU:
# graphviz's `dot` program (when missing), a virtual environment in .venv, pinned dependencies
# (PyTorch 2.13.0: pip takes the CPU build where one is on the package index or local disk, and
# PyPI's CUDA build otherwise) and pocketnas itself in editable mode.
#
#   bash scripts/setup.sh         runtime dependencies
#   bash scripts/setup.sh --dev   also the test and lint tools, the PostgreSQL server (Debian's
#                                 postgresql package) that the tuning tests start, and NNI 3.0
#                                 for the NNI tests
#
# Safe to run again: each step is skipped when it is already done.
set -euo pipefail

cd "$(dirname "$0")/.."
dev=0
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    *) echo "setup.sh: unknown option $arg (valid: --dev)" >&2; exit 2 ;;
  esac
done

packages=()
command -v dot >/dev/null 2>&1 || packages+=(graphviz)
# Debian puts the server programs in /usr/lib/postgresql/VERSION/bin, outside PATH.
if [ "$dev" -eq 1 ] && ! command -v initdb >/dev/null 2>&1 \
    && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  packages+=(postgresql)
fi
if [ "${#packages[@]}" -gt 0 ]; then
  echo "setup.sh: installing ${packages[*]} with apt-get"
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${packages[@]}" >/dev/null
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi

requirements=requirements.txt
[ "$dev" -eq 1 ] && requirements=requirements-dev.txt
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$requirements"
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
echo "setup.sh: ready; run .venv/bin/pocketnas --help"
