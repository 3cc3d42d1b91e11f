#!/usr/bin/env bash
# Download the released InstructPix2Pix checkpoint (instruct-pix2pix-00-22000.ckpt, about 7.7 GB), the
# starting point of configs/sketch2pokemon/train.yaml and the default model of edit_cli.py.
#
#   scripts/download_checkpoints.sh
#
# Resumable (run it again after an interruption); the file appears under its final name only when
# complete. Environment:
#   CHECKPOINT_DIR   destination folder (default: checkpoints/ in the repository root)
#   IP2P_BASE_URL    where the file lives (default: the original download server below)
#   IP2P_SHA256      expected SHA256; no sum is published for this file, so it is only checked when set
set -euo pipefail
PROG=$(basename "$0")
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=download_lib.sh
source "$ROOT/scripts/download_lib.sh"

BASE=${IP2P_BASE_URL:-http://instruct-pix2pix.eecs.berkeley.edu}
DIR=${CHECKPOINT_DIR:-$ROOT/checkpoints}
fetch "$BASE/instruct-pix2pix-00-22000.ckpt" "$DIR/instruct-pix2pix-00-22000.ckpt" "${IP2P_SHA256:-}" IP2P_BASE_URL
