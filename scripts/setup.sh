#!/usr/bin/env bash
# Create or reuse the virtual environment and install wavflow with its test tools.
#
# torch: kept if the environment already has one; otherwise the CPU build (torch==2.13.0 from the
# PyTorch CPU index) where there is no CUDA GPU, and the default build where there is one.
# Settings: WAVFLOW_VENV (default .venv), PYTHON (default python3), WAVFLOW_TORCH_VERSION,
# WAVFLOW_TORCH_CPU_INDEX.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${WAVFLOW_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
torch_version="${WAVFLOW_TORCH_VERSION:-2.13.0}"
cpu_index="${WAVFLOW_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"

if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating virtual environment $venv" >&2
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet)

if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: CUDA GPU found: installing the default torch build" >&2
    "${pip[@]}" torch
  else
    echo "setup: no CUDA GPU: installing the CPU build of torch==$torch_version" >&2
    # Use the CPU index when it answers; offline machines take the wheel pip finds locally.
    extra=()
    if "$venv/bin/python" -c "import sys, urllib.request as u; u.urlopen(sys.argv[1], timeout=5)" \
      "$cpu_index/torch/" >/dev/null 2>&1; then
      extra=(--extra-index-url "$cpu_index")
    fi
    "${pip[@]}" "torch==$torch_version" "${extra[@]}"
  fi
fi

if ! "$venv/bin/python" -c "import wavflow, pytest, ruff" 2>/dev/null \
  || [ "$root/pyproject.toml" -nt "$venv/.wavflow-installed" ]; then
  echo "setup: installing wavflow and its dependencies" >&2
  # pesq and pysptk are built from source when they are not installed yet.
  if ! "$venv/bin/python" -c "import pesq, pysptk" 2>/dev/null \
    && ! command -v cc >/dev/null 2>&1 && ! command -v gcc >/dev/null 2>&1; then
    echo "setup: no C compiler found: pesq and pysptk are built from source; install one and" \
      "the Python headers first (Debian/Ubuntu: apt-get install build-essential python3-dev)" >&2
    exit 1
  fi
  "${pip[@]}" -e "$root[dev]"
  # Export and runtime extras (their tests skip without them): taken when pip can get them.
  "${pip[@]}" -e "$root[onnx,safetensors]" \
    || echo "setup: onnx/onnxruntime/safetensors not installable: their tests will skip" >&2
  touch "$venv/.wavflow-installed"
fi
