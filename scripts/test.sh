#!/usr/bin/env bash
# Install what is needed (first run only) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest -n 2 -q -p no:cacheprovider "$@"
