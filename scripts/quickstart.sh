#!/usr/bin/env bash
# The embedded default, end to end on CPU with no downloads (what `make demo` runs):
# OpenMoji sketch/color pairs -> KL autoencoder -> editing model -> edits of held-out sketches
# -> grid and metrics. Each step reuses what earlier runs left (data, checkpoints); FRESH=1 starts over.
#
# Environment (defaults in brackets; the tiny end-to-end test shrinks every stage with these):
#   PY [.venv/bin/python]  DATA [data/openmoji]  LOGDIR [logs]  OUT [outputs/demo]
#   LIMIT   only the first N emojis [all]        AE_STEPS, EDIT_STEPS   training steps [the configs']
#   PER_KIND  test pairs edited per kind [24]    SAMPLE_STEPS  sampler steps per edit [20]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:-data/openmoji}
LOGDIR=${LOGDIR:-logs}
OUT=${OUT:-outputs/demo}
PER_KIND=${PER_KIND:-24}
AE_RUN=$LOGDIR/openmoji-autoencoder
EDIT_RUN=$LOGDIR/openmoji-edit
EDIT_ARGS=(--resolution 64 --steps "${SAMPLE_STEPS:-20}" --sampler euler --seed 0
           --config configs/openmoji/generate.yaml --ckpt "$EDIT_RUN/checkpoints/last.ckpt")

if [[ "${FRESH:-0}" == 1 ]]; then
  rm -rf "$DATA" "$AE_RUN" "$EDIT_RUN" "$OUT"
fi
start=$SECONDS
step() { printf '\n== [%4ds] %s\n' $((SECONDS - start)) "$*"; }

step "1/6 OpenMoji sketch/color pairs at 64 px ($DATA)"
$PY dataset_creation/openmoji.py --out "$DATA" --size 64 ${LIMIT:+--limit "$LIMIT"}

step "2/6 KL autoencoder (resumes, or skips when $AE_RUN is done)"
$PY main.py --base configs/openmoji/autoencoder.yaml --train --name openmoji-autoencoder --logger csv \
  --logdir "$LOGDIR" ${AE_STEPS:+--max_steps "$AE_STEPS"} "data.params.train.params.path=$DATA/train"

step "3/6 editing model (resumes, or skips when $EDIT_RUN is done)"
$PY main.py --base configs/openmoji/train.yaml --train --name openmoji-edit --logger csv \
  --logdir "$LOGDIR" ${EDIT_STEPS:+--max_steps "$EDIT_STEPS"} "data.params.train.params.path=$DATA/train" \
  "model.params.first_stage_config.params.ckpt_path=$AE_RUN/checkpoints/last.ckpt"

step "4/6 edit held-out test sketches"
rm -rf "$OUT/pred" "$OUT/pred_notext" "$OUT/fixed" "$OUT/autoencoder"
$PY scripts/demo.py jobs --pairs "$DATA/test.csv" --out "$OUT" --per-kind "$PER_KIND"
cat "$OUT/jobs.jsonl" "$OUT/jobs_notext.jsonl" "$OUT/jobs_fixed.jsonl" > "$OUT/jobs_all.jsonl"
$PY edit_cli.py --input "$OUT/jobs_all.jsonl" "${EDIT_ARGS[@]}"

step "5/6 metrics (model, instruction off, the autoencoder's ceiling, baselines)"
$PY scripts/demo.py reconstruct --pairs "$DATA/test.csv" --out "$OUT" --ckpt "$AE_RUN/checkpoints/last.ckpt"
$PY metrics/colorization.py --pairs "$DATA/test.csv" --allow-missing --pred-dir "model=$OUT/pred" \
  --pred-dir "no_text=$OUT/pred_notext" --pred-dir "autoencoder=$OUT/autoencoder" --out "$OUT/metrics.json"

step "6/6 grid"
$PY scripts/demo.py grid --pairs "$DATA/test.csv" --out "$OUT"
step "done: $OUT/grid.png, $OUT/metrics.json"
