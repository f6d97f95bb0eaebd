#!/usr/bin/env bash
# Install what the tests need (first run only), then run the whole test suite twice: on the newest
# supported transformers (.venv) and on the oldest (.venv-oldest); the pins are in scripts/bootstrap.sh.
# Arguments go to both pytest runs (e.g. a test file); the command fails if either run fails.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh dev
bash scripts/bootstrap.sh oldest
failed=""
for venv in .venv .venv-oldest; do
  version="$("$venv/bin/python" -c "import transformers; print(transformers.__version__)")"
  echo "== the test suite on transformers $version ($venv)"
  "$venv/bin/python" -m pytest -n 2 -q -p no:cacheprovider "$@" || failed="$failed $version"
done
if [ -n "$failed" ]; then
  echo "FAILED on transformers$failed" >&2
  exit 1
fi
