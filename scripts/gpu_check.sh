#!/usr/bin/env bash
# The GPU check (issue 14): one command, about 8 minutes on one GPU, one markdown report.
#
#   scripts/gpu_check.sh              run the checks; the report and logs go to $OUT (default
#                                     gpu_check/): gpu_check.md, gpu_tests.txt, bench_*/, distill/
#   scripts/gpu_check.sh fetch [PY]   beforehand, on the CPU machine (internet, librosa): fill
#                                     wheels/ with what the GPU machine lacks, for CPython PY
#                                     (default 311), and data/prepared/gpu_check/ with the
#                                     distillation's corpus; carry both (git-ignored) with the tree
#
# The checks, in order, each under its own time limit:
#   1. the `gpu`-marked tests (tests/test_gpu.py): a training step of every model with and
#      without bf16 autocast, round trips under CUDA autocast, a CPU checkpoint resumed on CUDA
#      with EMA, cached == naive generation, synthesis and an exported student, DDP with NCCL
#      on the GPUs present;
#   2. `wavflow bench` on CUDA: the teacher's sequential paths (the `teacher-*` methods of the
#      benchmark's defaults) and every student, fp32 and bf16, batch 1 and 16;
#   3. a distillation of 3 minutes on the built-in corpus, from a teacher trained for 45 s.
#
# The GPU machine reaches no package registry; it has CUDA torch, tensorboard, tqdm, matplotlib
# and scipy, not librosa, soundfile, soxr or pytest. So this script never runs scripts/setup.sh:
# it installs wheels/ with --no-index and wavflow with --no-deps. librosa is not carried (with
# numba and llvmlite it passes the 64 MiB the machine takes along): training, synthesis and the
# benchmark never import it, as wavflow has its own mel filterbank and silence trimming. Only
# pyin F0 needs it, and the demo recipe's pitch needs F0, so `fetch` prepares the distillation's
# corpus here, on the CPU machine, and the GPU machine only reads it (the GPU tests prepare
# theirs without F0). Carry wheels and data/prepared/gpu_check: 4 + 9 MiB, measured.
#
# The distillation's validation gives MCD (pysptk, which has no wheel) and pyin F0 errors
# (librosa) only where those are installed; on the GPU machine it reports the log-mel distance.
#
# Without a CUDA device it exits 0 and says plainly that the checks were skipped.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${WAVFLOW_PYTHON:-python3}"
[ -x "$root/.venv/bin/python" ] && [ -z "${WAVFLOW_PYTHON:-}" ] && python="$root/.venv/bin/python"

# What the checks import beyond the GPU machine's packages (tests/test_audio_without_librosa.py
# imports the stacks with librosa, numba, sklearn, pesq, pystoi and pysptk blocked): soundfile
# (with cffi's backend) and soxr for audio I/O, and pytest with what it imports.
WHEELS=(soundfile cffi pycparser soxr pytest pluggy iniconfig pygments packaging)
CARRY_MIB=64  # what the device machine takes along with the tree: wheels/ and the data together
RECIPE=recipes/demo.toml
data="$root/data/prepared/gpu_check"  # the corpus, as `wavflow prepare` writes it with RECIPE

if [ "${1:-}" = fetch ]; then
  version="${2:-311}"
  mkdir -p "$root/wheels"
  "$python" -m pip download --only-binary=:all: --no-deps --python-version "$version" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d "$root/wheels" "${WHEELS[@]}" || exit 1
  corpus="$(mktemp -d)"
  "$python" -m wavflow corpus "$corpus" --minutes 2 || exit 1
  "$python" -m wavflow prepare "$corpus" "$data" --recipe "$root/$RECIPE" --quiet || exit 1
  rm -rf "$corpus"
  wheels_mib=$(du -sm "$root/wheels" | cut -f1)
  data_mib=$(du -sm "$data" | cut -f1)
  echo "wheels/: $wheels_mib MiB for ${#WHEELS[@]} packages; ${data#"$root/"}/: $data_mib MiB"
  if [ $((wheels_mib + data_mib)) -gt "$CARRY_MIB" ]; then
    echo "over the $CARRY_MIB MiB that can be carried" >&2
    exit 1
  fi
  exit 0
fi

out="${OUT:-$root/gpu_check}"
mkdir -p "$out"
report="$out/gpu_check.md"
CHECKS=("the gpu-marked tests ($(grep -c '^@pytest.mark.gpu' "$root/tests/test_gpu.py") test functions in tests/test_gpu.py)"
  "wavflow bench on CUDA (teacher and every student, fp32 and bf16, batch 1 and 16)"
  "a 3-minute distillation on the built-in corpus")

if ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' \
  2>/dev/null; then
  message="no CUDA device: the ${#CHECKS[@]} GPU checks were skipped"
  {
    echo "# GPU check"
    echo
    echo "$message:"
    for check in "${CHECKS[@]}"; do echo "- $check"; done
  } >"$report"
  echo "$message:"
  printf -- '- %s\n' "${CHECKS[@]}"
  exit 0
fi

cd "$root" || exit 1
# wheels/ first (no registry), then wavflow itself without dependencies.
if [ -d wheels ] && ls wheels/*.whl >/dev/null 2>&1; then
  "$python" -m pip install -q --no-index --no-deps wheels/*.whl
fi
"$python" -m pip install -q --no-index --no-deps --no-build-isolation -e . \
  || export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
missing=$("$python" -c 'import importlib.util as u
names = ["soundfile", "soxr", "pytest"]
print(" ".join(n for n in names if u.find_spec(n) is None))')
[ -z "$missing" ] || echo "missing here: $missing (fill wheels/ with scripts/gpu_check.sh fetch)"

status=0
section() {  # section NAME SECONDS COMMAND...: run with a time limit, log, record the outcome
  local name="$1" limit="$2" start rc
  shift 2
  start=$(date +%s)
  timeout "$limit" "$@" >"$out/$name.txt" 2>&1
  rc=$?
  [ "$rc" -eq 0 ] || status=1
  printf '| %s | %s | %ss |\n' "$name" "$([ "$rc" -eq 0 ] && echo ok || echo "failed ($rc)")" \
    "$(($(date +%s) - start))" >>"$out/sections.md"
}
: >"$out/sections.md"

section gpu_tests 100 "$python" -m pytest -q --gpu -m gpu tests/test_gpu.py -p no:cacheprovider

# The limits add up to 465 s. Sequential teacher: 0.1 s (every sample is a step, and the
# naive path runs the whole stack per step); students: 1 s and 4 s.
teacher_methods=$("$python" -c 'from wavflow.benchmark import DEFAULT
print(",".join(m for m in DEFAULT.methods if m.startswith("teacher")))')
section bench_teacher 60 "$python" -m wavflow bench --device cuda --out "$out/bench_teacher" \
  --methods "$teacher_methods" --dtype fp32,bf16 --batch 1,16 --lengths 0.1 --repeats 2
section bench_students 45 "$python" -m wavflow bench --device cuda --out "$out/bench_students" \
  --methods iaf,waveglow,flowavenet,squeezewave --dtype fp32,bf16 --batch 1,16 --lengths 1,4 \
  --repeats 3

if [ -f "$data/manifest.jsonl" ]; then
  section teacher 60 "$python" -m wavflow train-teacher --recipe "$RECIPE" --quiet \
    --data "$data" --out "$out/distill/teacher" --set train.max_seconds=45 \
    --set train.steps=100000 --set train.eval_every=500
  section distill 200 "$python" -m wavflow train-student --recipe "$RECIPE" --quiet \
    --data "$data" --out "$out/distill/iaf" --teacher "$out/distill/teacher/best.pt" \
    --set train.max_seconds=180 --set train.student_steps=100000 --set train.eval_every=250
else
  status=1
  printf '| distill | skipped: no %s (run `fetch` on the CPU machine) | 0s |\n' \
    "${data#"$root/"}" >>"$out/sections.md"
fi

{
  echo "# GPU check"
  echo
  "$python" -c 'import torch
print(f"{torch.cuda.get_device_name()} x {torch.cuda.device_count()}, torch {torch.__version__},",
      f"CUDA {torch.version.cuda}")'
  [ -z "$missing" ] || printf '\nMissing packages: %s\n' "$missing"
  echo
  echo "| check | result | time |"
  echo "|---|---|---|"
  cat "$out/sections.md"
  echo
  echo "## gpu-marked tests"
  echo
  tail -n 3 "$out/gpu_tests.txt"
  for bench in bench_teacher bench_students; do
    echo
    echo "## $bench"
    echo
    cat "$out/$bench/bench.md" 2>/dev/null || echo "(no table: see $bench.txt)"
  done
  echo
  echo "## distillation (last validation of teacher and student)"
  echo
  for run in teacher iaf; do
    metrics="$out/distill/$run/metrics.jsonl"
    echo "- $run: $(grep '"val/' "$metrics" 2>/dev/null | tail -n 1)"
  done
} >"$report"
cat "$report"
exit "$status"
