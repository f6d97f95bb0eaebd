#!/usr/bin/env bash
# Install the runtime dependencies (first run only), then the main job: a ROME causal trace of one fact
# of the embedded demo model through the command line (heatmap in out/causal_trace.png).
# INTERVENABLE_VENV=.venv-oldest runs it on the oldest supported transformers instead (scripts/bootstrap.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${INTERVENABLE_VENV:-.venv}"
case "$venv" in
  .venv) bash scripts/bootstrap.sh runtime ;;
  .venv-oldest) bash scripts/bootstrap.sh oldest ;;
  *) echo "INTERVENABLE_VENV is .venv (the default) or .venv-oldest, not '$venv'" >&2; exit 2 ;;
esac
if [ -f intervenable/demo/model/config.json ]; then
  exec "$venv/bin/python" -m intervenable.demo.main "$@"
fi
echo "The embedded demo model is not trained yet (intervenable/demo/model/); running the quickstart instead."
exec "$venv/bin/python" -m intervenable.quickstart "$@"
