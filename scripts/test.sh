#!/usr/bin/env bash
# Set up (if needed), lint, and run the test suite on the CPU. Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
venv="${WAVFLOW_VENV:-$root/.venv}"
cd "$root"
"$venv/bin/ruff" check wavflow tests scripts
"$venv/bin/python" -m pytest -q "$@"
