#!/usr/bin/env bash
# Create a virtual environment (if needed) and install intervenable into it.
#   bash scripts/bootstrap.sh [runtime]  .venv: the package and its runtime dependencies (scripts/demo.sh)
#   bash scripts/bootstrap.sh dev        .venv: also the dev extras the tests need (scripts/test.sh)
#   bash scripts/bootstrap.sh oldest     .venv-oldest: the same as dev on the oldest supported transformers
#   bash scripts/bootstrap.sh last4      .venv-last4: the same on the last 4.x release
#                                        (scripts/test.sh runs the suite in all three)
# torch==2.13.0 (the CPU build) is installed first so that no CUDA build of torch is pulled.
# pip is quiet: nothing is printed on success, its whole log on failure.
# Each part runs again only when pyproject.toml or this script changed (stamps in the venv).
set -euo pipefail
cd "$(dirname "$0")/.."

# The two ends of the supported transformers range (pyproject.toml), and the last 4.x release between
# them, pinned here and only here; scripts/test.sh runs the whole suite on each. The oldest is pyreft
# 0.1.0's pin. tests/test_bootstrap.py checks pyproject.toml agrees.
NEWEST_TRANSFORMERS=5.24.0
OLDEST_TRANSFORMERS=4.45.1
LAST4_TRANSFORMERS=4.57.6
TORCH=2.13.0

part="${1:-runtime}"
case "$part" in
  runtime|dev) venv=.venv; transformers="$NEWEST_TRANSFORMERS" ;;
  oldest) venv=.venv-oldest; transformers="$OLDEST_TRANSFORMERS" ;;
  last4) venv=.venv-last4; transformers="$LAST4_TRANSFORMERS" ;;
  *) echo "usage: bash scripts/bootstrap.sh [runtime|dev|oldest|last4]" >&2; exit 2 ;;
esac
PY="${PYTHON:-python3}"

pip_install() {  # pip install into $venv: silent on success, the whole log on failure
  local log
  log="$(mktemp)"
  if ! "$venv/bin/python" -m pip install -q "$@" >"$log" 2>&1; then
    echo "bootstrap: pip install $* failed:" >&2
    cat "$log" >&2; rm -f "$log"; exit 1
  fi
  rm -f "$log"
}

installing() {  # one line on stderr, so that a first run's wait is explained
  echo "bootstrap: installing $1 into $venv (first run, or pyproject.toml changed)..." >&2
}

want="$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ]; then
  "$PY" -m venv "$venv"
fi

base() {  # torch first, then the package with the pinned transformers
  pip_install --upgrade pip
  pip_install "torch==$TORCH"
  pip_install -e "$1" "transformers==$transformers"
}

tests_only() {
  # tests/test_pyreft.py: pyreft 0.1.0 pins transformers 4.45 and requires pyvene, so it is installed
  # without its dependencies; it needs datasets at import (resolved with the pinned transformers, so
  # that huggingface_hub stays in the range that transformers takes).
  pip_install "transformers==$transformers" datasets
  pip_install --no-deps "pyreft==0.1.0"
}

if [ "$part" = oldest ] || [ "$part" = last4 ]; then
  stamp="$venv/.intervenable-$part"
  if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    installing "torch $TORCH, transformers $transformers, intervenable and its dev extras"
    base ".[dev]"
    tests_only
    "$venv/bin/python" -c "import torch, transformers, intervenable"
    echo "$want" > "$stamp"
  fi
  exit 0
fi

stamp="$venv/.intervenable-runtime"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  installing "torch $TORCH, transformers $transformers and intervenable"
  base .
  "$venv/bin/python" -c "import torch, transformers, intervenable"
  echo "$want" > "$stamp"
fi

if [ "$part" = dev ]; then
  stamp="$venv/.intervenable-dev"
  if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    installing "the dev extras"
    pip_install -e ".[dev]" "transformers==$transformers"
    tests_only
    echo "$want" > "$stamp"
  fi
fi
