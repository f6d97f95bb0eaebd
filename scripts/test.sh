#!/usr/bin/env bash
# Install the runtime and dev dependencies (first run only) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh dev
exec .venv/bin/python -m pytest -n 2 -q -p no:cacheprovider "$@"
