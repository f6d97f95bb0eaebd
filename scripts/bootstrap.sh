#!/usr/bin/env bash
# Create .venv (if needed) and install intervenable into it.
#   bash scripts/bootstrap.sh [runtime]  the package and its runtime dependencies (scripts/demo.sh)
#   bash scripts/bootstrap.sh dev        also the dev extras the tests need (scripts/test.sh)
# torch==2.13.0 (the CPU build) is installed first so that no CUDA build of torch is pulled.
# Each part runs again only when pyproject.toml or this script changed (stamps in .venv/).
set -euo pipefail
cd "$(dirname "$0")/.."
part="${1:-runtime}"
case "$part" in
  runtime|dev) ;;
  *) echo "usage: bash scripts/bootstrap.sh [runtime|dev]" >&2; exit 2 ;;
esac
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi

pip_install() {  # pip install, quiet, failing loudly
  local log
  log="$(mktemp)"
  if ! .venv/bin/python -m pip install -q "$@" >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"; exit 1
  fi
  grep -v "is ignored" "$log" || true
  rm -f "$log"
}

want="$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)"

stamp=.venv/.intervenable-runtime
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  pip_install --upgrade pip
  pip_install "torch==2.13.0"
  pip_install -e .
  .venv/bin/python -c "import torch, transformers, intervenable"
  echo "$want" > "$stamp"
fi

if [ "$part" = dev ]; then
  stamp=.venv/.intervenable-dev
  if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    pip_install -e ".[dev]"
    # Tests only (tests/test_pyreft.py): pyreft 0.1.0 pins transformers 4.45 and requires pyvene,
    # so it is installed without its dependencies; it needs datasets at import.
    pip_install datasets
    pip_install --no-deps "pyreft==0.1.0"
    echo "$want" > "$stamp"
  fi
fi
