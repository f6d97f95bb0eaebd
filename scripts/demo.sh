#!/usr/bin/env bash
# Install what is needed (first run only) and run the main demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m intervenable.quickstart "$@"
