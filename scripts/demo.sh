#!/usr/bin/env bash
# Set up (if needed) and run the main job end to end on the built-in corpus (`wavflow demo`).
# Extra arguments go to `wavflow demo`, e.g. --out DIR.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
venv="${WAVFLOW_VENV:-$root/.venv}"
cd "$root"
"$venv/bin/wavflow" demo "$@"
