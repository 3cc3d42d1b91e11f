#!/usr/bin/env bash
# The embedded default, end to end on CPU with no downloads (what `make demo` runs):
# OpenMoji sketch/color pairs -> KL autoencoder -> editing model -> edits of held-out sketches
# -> grid and metrics. Each step reuses what earlier runs left (data, checkpoints); FRESH=1 starts over.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=data/openmoji
OUT=outputs/demo
EDIT_ARGS=(--resolution 64 --steps 20 --sampler euler --seed 0 --config configs/openmoji/generate.yaml
           --ckpt logs/openmoji-edit/checkpoints/last.ckpt)

if [[ "${FRESH:-0}" == 1 ]]; then
  rm -rf "$DATA" logs/openmoji-autoencoder logs/openmoji-edit "$OUT"
fi
start=$SECONDS
step() { printf '\n== [%4ds] %s\n' $((SECONDS - start)) "$*"; }

step "1/6 OpenMoji sketch/color pairs at 64 px ($DATA)"
$PY dataset_creation/openmoji.py --out "$DATA" --size 64

step "2/6 KL autoencoder (resumes or skips if logs/openmoji-autoencoder is done)"
$PY main.py --base configs/openmoji/autoencoder.yaml --train --name openmoji-autoencoder --logger csv

step "3/6 editing model (resumes or skips if logs/openmoji-edit is done)"
$PY main.py --base configs/openmoji/train.yaml --train --name openmoji-edit --logger csv

step "4/6 edit held-out test sketches"
rm -rf "$OUT/pred" "$OUT/pred_notext" "$OUT/fixed"
$PY scripts/demo.py jobs --pairs "$DATA/test.csv" --out "$OUT"
$PY edit_cli.py --input "$OUT/jobs.jsonl" "${EDIT_ARGS[@]}"
$PY edit_cli.py --input "$OUT/jobs_notext.jsonl" "${EDIT_ARGS[@]}" --cfg-text 0
$PY edit_cli.py --input "$OUT/jobs_fixed.jsonl" "${EDIT_ARGS[@]}"

step "5/6 metrics (model, instruction off, baselines)"
$PY metrics/colorization.py --pairs "$DATA/test.csv" --allow-missing \
  --pred-dir "model=$OUT/pred" --pred-dir "no_text=$OUT/pred_notext" --out "$OUT/metrics.json"

step "6/6 grid"
$PY scripts/demo.py grid --pairs "$DATA/test.csv" --out "$OUT"
step "done: $OUT/grid.png, $OUT/metrics.json"
