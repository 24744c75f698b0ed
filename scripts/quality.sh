#!/usr/bin/env bash
# The quality pipeline of recipes/quality.toml, end to end, scored on held-back speech:
#   corpus -> prepare -> teacher -> IAF and SqueezeWave trained with the recipe's losses ->
#   (with --ablation, each student's twin with the teacher's KL toggled) -> `wavflow evaluate`
#   on utterances of three voices that training never saw, beside the real-audio and
#   Griffin-Lim rows.
# Budgets are steps (the recipe's train.steps and train.student_steps); about an hour on 2 CPU
# cores without the ablation. Every stage resumes where it stopped.
#
# Usage: bash scripts/quality.sh [OUT_DIR (default runs/quality)] [--ablation]
# Extra settings: RECIPE (default recipes/quality.toml), EVAL_SECONDS (default 4),
# STUDENT_TEMPERATURE (default 0.7: the students are scored a second time with their noise
# scaled by it, in quality_students_T<t>.md; 1 skips that table), TWIN_KL_IAF and
# TWIN_KL_SQUEEZEWAVE (the KL weights of the distilled twins of --ablation).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-runs/quality}"
ablation="${2:-}"
recipe="${RECIPE:-$root/recipes/quality.toml}"
bash "$root/scripts/setup.sh"
wavflow="${WAVFLOW_VENV:-$root/.venv}/bin/wavflow"
minutes=$("${WAVFLOW_VENV:-$root/.venv}/bin/python" -c \
  "from wavflow.config import load_recipe; print(load_recipe('$recipe').data.corpus_minutes)")
mkdir -p "$out"
started=$(date +%s)
stamp() { echo "== $1 ($(( $(date +%s) - started )) s)"; }

stamp corpus
[ -f "$out/corpus/corpus.json" ] || "$wavflow" corpus "$out/corpus" --minutes "$minutes" --seed 0
# Held-back speech: new utterances (seed 99) of three voices between the training ones
# (7 voices spread over the same range; the training corpus has 4: spk1, spk3, spk5 are new).
if [ ! -d "$out/heldout" ]; then
  "$wavflow" corpus "$out/heldout_all" --minutes 1.6 --seed 99 --speakers 7
  for speaker in spk1 spk3 spk5; do
    mkdir -p "$out/heldout/$speaker"
    for wav in $(ls "$out/heldout_all/$speaker"/*.wav | head -n 4); do
      cp "$wav" "$out/heldout/$speaker/"
    done
  done
fi
stamp prepare
"$wavflow" prepare "$out/corpus" "$out/prepared" --recipe "$recipe" --workers 2 --quiet

train() {  # train RUN COMMAND...: run, or resume, a training stage
  local run="$1"; shift
  [ -f "$run/done" ] && return 0
  local resume=()
  [ -f "$run/recipe.toml" ] && resume=(--resume)
  "$wavflow" "$@" --recipe "$recipe" --data "$out/prepared" --out "$run" --quiet "${resume[@]}"
  touch "$run/done"
}
last() { ls "$1"/ckpt_*.pt | tail -n 1; }  # the checkpoint at the step budget
stamp teacher
train "$out/teacher" train-teacher
checkpoints=(--checkpoint "$(last "$out/teacher")")
for student in iaf squeezewave; do
  stamp "$student"
  train "$out/$student" train-student --student "$student" --teacher "$(last "$out/teacher")"
  checkpoints+=(--checkpoint "$(last "$out/$student")")
done
if [ "$ablation" = "--ablation" ]; then
  for student in iaf squeezewave; do
    # The twin with the teacher's terms toggled, in the student's own weights table when the
    # recipe gives it one ([distill.students.<kind>.weights] replaces [distill.weights] whole):
    # a student the recipe distils is trained on the spectral losses alone, one it trains on
    # those alone is distilled (KL weight $TWIN_KL_<KIND>: 1 for the IAF, with its log-scale
    # term at 0.1, and 0.01 for SqueezeWave, whose sample-based KL is safe only there).
    read -r table kl < <("${WAVFLOW_VENV:-$root/.venv}/bin/python" -c "from wavflow.config import load_recipe
distill = load_recipe('$recipe').distill
own = distill.students.get('$student', {}).get('weights')
table = 'distill.students.$student.weights' if own is not None else 'distill.weights'
print(table, distill.for_student('$student').weights.get('kl', 0.0))")
    if [ "$kl" = "0.0" ]; then
      name=distilled
      twin=1.0; [ "$student" = squeezewave ] && twin=0.01
      [ "$student" = iaf ] && twin="${TWIN_KL_IAF:-$twin}"
      [ "$student" = squeezewave ] && twin="${TWIN_KL_SQUEEZEWAVE:-$twin}"
      settings=(--set "$table.kl=$twin")
      [ "$student" = iaf ] && settings+=(--set "$table.log_scale=0.1")
    else
      name=spectral
      settings=(--set "$table.kl=0.0" --set "$table.log_scale=0.0")
    fi
    stamp "$student ($name twin)"
    train "$out/${student}_$name" train-student --student "$student" \
      --teacher "$(last "$out/teacher")" "${settings[@]}"
    checkpoints+=(--checkpoint "$(last "$out/${student}_$name")")
  done
fi
stamp evaluate
evaluate() {  # evaluate NAME TEMPERATURE CHECKPOINT_ARGS...: one table over the held-back speech
  local name="$1" temperature="$2"; shift 2
  "$wavflow" evaluate "$@" --audio "$out/heldout" --max-utterances 12 \
    --max-seconds "${EVAL_SECONDS:-4}" --temperature "$temperature" --out "$out/$name.json" \
    --quiet | tee "$out/$name.md"
}
evaluate quality 1 "${checkpoints[@]}"
student_temperature="${STUDENT_TEMPERATURE:-0.7}"
if [ "$student_temperature" != 1 ]; then
  stamp "evaluate students at temperature $student_temperature"
  evaluate "quality_students_T$student_temperature" "$student_temperature" "${checkpoints[@]:2}"
fi
stamp done
