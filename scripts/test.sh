#!/usr/bin/env bash
# Install what the tests need (first run only), then run the whole test suite three times: on the newest
# supported transformers (.venv), the oldest (.venv-oldest) and the last 4.x release (.venv-last4); the
# pins are in scripts/bootstrap.sh. Arguments go to every pytest run (e.g. a test file); the command
# fails if any run fails.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh dev
bash scripts/bootstrap.sh oldest
bash scripts/bootstrap.sh last4
failed=""
for venv in .venv .venv-oldest .venv-last4; do
  version="$("$venv/bin/python" -c "import transformers; print(transformers.__version__)")"
  echo "== the test suite on transformers $version ($venv)"
  "$venv/bin/python" -m pytest -n 2 -q -p no:cacheprovider "$@" || failed="$failed $version"
done
if [ -n "$failed" ]; then
  echo "FAILED on transformers$failed" >&2
  exit 1
fi
