#!/usr/bin/env bash
# Create .venv (if needed) and install intervenable with its dev extras.
# torch==2.13.0 is installed first so that no CUDA build of torch is pulled.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.intervenable-installed
want="$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -m pip install -q "torch==2.13.0" 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -m pip install -q -e ".[dev]" 2>&1 | grep -v "is ignored" || true
  # Tests only (tests/test_pyreft.py): pyreft 0.1.0 pins transformers 4.45 and requires pyvene,
  # so it is installed without its dependencies; it needs datasets at import.
  .venv/bin/python -m pip install -q datasets 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -m pip install -q --no-deps "pyreft==0.1.0" 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -c "import torch, transformers, intervenable" 
  echo "$want" > "$stamp"
fi
