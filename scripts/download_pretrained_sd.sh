#!/usr/bin/env bash
# Download Stable Diffusion 1.5 (v1-5-pruned-emaonly.ckpt, 4.3 GB; the starting point of
# configs/train.yaml and configs/sketch2pokemon/train_from_sd15.yaml) and the fine-tuned autoencoder
# decoder (vae-ft-mse-840000-ema-pruned.ckpt, 335 MB; `edit_cli.py --vae-ckpt`), both checked against
# their published SHA256.
#
#   scripts/download_pretrained_sd.sh
#
# Resumable; files appear under their final names only when complete and verified. Environment:
#   CHECKPOINT_DIR  destination folder (default: checkpoints/ in the repository root)
#   SD15_BASE_URL   default: the stable-diffusion-v1-5 mirror on Hugging Face (runwayml removed the
#                   original repository in 2024; the SHA256 check makes any mirror safe)
#   VAE_BASE_URL    default: stabilityai/sd-vae-ft-mse-original on Hugging Face
#   SKIP_VERIFY=1   do not re-hash files that are already there
set -euo pipefail
PROG=$(basename "$0")
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=download_lib.sh
source "$ROOT/scripts/download_lib.sh"

SD15_BASE=${SD15_BASE_URL:-https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/main}
VAE_BASE=${VAE_BASE_URL:-https://huggingface.co/stabilityai/sd-vae-ft-mse-original/resolve/main}
DIR=${CHECKPOINT_DIR:-$ROOT/checkpoints}
SD15_SHA256=cc6cb27103417325ff94f52b7a5d2dde45a7515b25c255d8e396c90014281516
VAE_SHA256=c6a580b13a5bc05a5e16e4dbb80608ff2ec251a162311590c1f34c013d7f3dab

fetch "$SD15_BASE/v1-5-pruned-emaonly.ckpt" "$DIR/v1-5-pruned-emaonly.ckpt" "$SD15_SHA256" SD15_BASE_URL
fetch "$VAE_BASE/vae-ft-mse-840000-ema-pruned.ckpt" "$DIR/vae-ft-mse-840000-ema-pruned.ckpt" "$VAE_SHA256" VAE_BASE_URL
