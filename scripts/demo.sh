#!/usr/bin/env bash
# Install the runtime dependencies (first run only), then the main job: a ROME causal trace of one fact
# of the embedded demo model through the command line (heatmap in out/causal_trace.png).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh runtime
if [ -f intervenable/demo/model/config.json ]; then
  exec .venv/bin/python -m intervenable.demo.main "$@"
fi
echo "The embedded demo model is not trained yet (intervenable/demo/model/); running the quickstart instead."
exec .venv/bin/python -m intervenable.quickstart "$@"
