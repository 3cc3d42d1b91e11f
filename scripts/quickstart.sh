#!/usr/bin/env bash
# The embedded default, end to end on CPU with no downloads (what `make demo` runs):
# OpenMoji sketch/color pairs -> edits of held-out sketches by the shipped reference model
# (models/openmoji-64) -> a fresh editing model trained here with main.py (on the reference model's
# frozen autoencoder) -> the same edits by the fresh model -> one table and the grids. Each step
# reuses what earlier runs left (data, checkpoints); FRESH=1 starts over.
#
# Environment (defaults in brackets; the tiny end-to-end test shrinks every stage with these):
#   PY [.venv/bin/python]  DATA [data/openmoji]  LOGDIR [logs]  OUT [outputs/demo]
#   LIMIT   only the first N emojis [all]        EDIT_STEPS   training steps [the config's]
#   PER_KIND  test pairs edited per kind [12]    SAMPLE_STEPS  sampler steps per edit [20]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:-data/openmoji}
LOGDIR=${LOGDIR:-logs}
OUT=${OUT:-outputs/demo}
PER_KIND=${PER_KIND:-12}
EDIT_RUN=$LOGDIR/openmoji-edit
EVAL_ARGS=(--pairs "$DATA/test.csv" --per-kind "$PER_KIND" --fixed 3 --steps "${SAMPLE_STEPS:-20}")

if [[ "${FRESH:-0}" == 1 ]]; then
  rm -rf "$DATA" "$EDIT_RUN" "$OUT"
fi
start=$SECONDS
step() { printf '\n== [%4ds] %s\n' $((SECONDS - start)) "$*"; }

step "1/5 OpenMoji sketch/color pairs at 64 px ($DATA)"
$PY -m dataset_creation.openmoji --out "$DATA" --size 64 ${LIMIT:+--limit "$LIMIT"}

step "2/5 the reference model (models/openmoji-64) edits held-out test sketches"
$PY scripts/eval_openmoji.py "${EVAL_ARGS[@]}" --out "$OUT/reference"

step "3/5 a fresh editing model (resumes, or skips when $EDIT_RUN is done)"
$PY main.py --base configs/openmoji/train.yaml --train --name openmoji-edit --logger csv \
  --logdir "$LOGDIR" ${EDIT_STEPS:+--max_steps "$EDIT_STEPS"} "data.params.train.params.path=$DATA/train"

step "4/5 the fresh model edits the same sketches"
$PY scripts/eval_openmoji.py "${EVAL_ARGS[@]}" --out "$OUT/fresh" \
  --config configs/openmoji/generate.yaml --ckpt "$EDIT_RUN/checkpoints/last.ckpt"

step "5/5 table and grids"
$PY scripts/demo.py --pairs "$DATA/test.csv" --out "$OUT" --runs reference fresh
step "done: $OUT/grid.png (reference model), $OUT/fresh/grid.png, $OUT/metrics.json"
echo "Try the reference model in a browser: $PY edit_app.py  (http://127.0.0.1:7860)"
