#!/usr/bin/env bash
# Set up and start the studio at http://127.0.0.1:7860 (extra flags go to app.py; see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python app.py "$@"
