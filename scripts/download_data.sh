#!/usr/bin/env bash
# Download datasets by name into data/ (or $DATA_DIR):
#
#   scripts/download_data.sh NAME [NAME ...]
#
#   clip-filtered-dataset  the InstructPix2Pix training set (generated pairs kept by the CLIP filters)
#   random-sample-dataset  a random sample of the generated pairs, unfiltered (both are hundreds of GB)
#   prompts                the original text prompts (human-written-prompts.jsonl, gpt-generated-prompts.jsonl)
#   pokemon-captions       svjack/pokemon-blip-captions-en-ja (parquet, 833 images + English / Japanese
#                          captions, CC BY-NC-SA 4.0) for dataset_creation/sketch2pokemon.py
#
# The two InstructPix2Pix datasets are folders of zip shards and seeds.json on the original server:
# the folder's listing is read, every file is fetched (resumable, complete files only under their final
# names), each shard is unzipped into data/<name>/ through a temporary folder and then deleted (a marker
# file .<shard>.extracted remembers it), so an interrupted run continues where it stopped.
# The Sketch2Pokemon pairs themselves are on Kaggle (norod78/sketch2pokemon) behind a login: see README.md.
# No checksums are published for these files. Environment:
#   DATA_DIR              destination (default: data/ in the repository root)
#   IP2P_DATA_BASE_URL    default http://instruct-pix2pix.eecs.berkeley.edu
#   POKEMON_CAPTIONS_URL  the parquet file's URL (default: the file on Hugging Face)
set -euo pipefail
PROG=$(basename "$0")
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=download_lib.sh
source "$ROOT/scripts/download_lib.sh"

BASE=${IP2P_DATA_BASE_URL:-http://instruct-pix2pix.eecs.berkeley.edu}
CAPTIONS_URL=${POKEMON_CAPTIONS_URL:-https://huggingface.co/datasets/svjack/pokemon-blip-captions-en-ja/resolve/main/data/train-00000-of-00001-b976ba0e28fc7cf1.parquet}
DIR=${DATA_DIR:-$ROOT/data}
NAMES="clip-filtered-dataset, random-sample-dataset, prompts, pokemon-captions"

# File names (.zip, .json) linked from the server's listing of folder $1.
list_folder() {
  local url="$BASE/$1/" page rc=0
  page=$(curl --silent --fail --location --connect-timeout 20 --max-time 300 "$url") || rc=$?
  ((rc == 0)) || die "cannot list $url: $(curl_reason "$rc"); check the network or proxy, or set IP2P_DATA_BASE_URL"
  printf '%s\n' "$page" | { grep -oE 'href="[^"/?#]+\.(zip|json)"' || true; } | sed -e 's/^href="//' -e 's/"$//' |
    sort -u
}

# Unzip shard $2 of folder $1 (through a temporary folder), then delete the zip.
extract() {
  local folder=$1 zip=$2 tmp entry
  tmp="$folder/.extract-${zip%.zip}"
  rm -rf "$tmp"
  unzip -q "$folder/$zip" -d "$tmp" || die "cannot unzip $folder/$zip; delete it and run again to fetch it anew"
  for entry in "$tmp"/* "$tmp"/.[!.]*; do
    [[ -e $entry ]] || continue
    rm -rf "${folder:?}/$(basename "$entry")"
    mv "$entry" "$folder/" || die "cannot move $entry into $folder"
  done
  rm -rf "$tmp"
  touch "$folder/.$zip.extracted"
  rm -f "$folder/$zip"
}

fetch_generated_dataset() {
  local name=$1 folder="$DIR/$1" files file
  command -v unzip >/dev/null || die "unzip is not installed; install it (apt-get install unzip) and run again"
  files=$(list_folder "$name")
  [[ -n $files ]] || die "$BASE/$name/ lists no .zip or .json files; check the dataset name or IP2P_DATA_BASE_URL"
  while IFS= read -r file; do
    if [[ $file == *.zip && -f "$folder/.$file.extracted" ]]; then
      continue
    fi
    fetch "$BASE/$name/$file" "$folder/$file" "" IP2P_DATA_BASE_URL
    if [[ $file == *.zip ]]; then
      extract "$folder" "$file"
    fi
  done <<<"$files"
  note "$folder is complete"
}

(($# > 0)) || die "name a dataset: $NAMES"
for name in "$@"; do
  case $name in
    clip-filtered-dataset | random-sample-dataset) fetch_generated_dataset "$name" ;;
    prompts)
      fetch "$BASE/human-written-prompts.jsonl" "$DIR/human-written-prompts.jsonl" "" IP2P_DATA_BASE_URL
      fetch "$BASE/gpt-generated-prompts.jsonl" "$DIR/gpt-generated-prompts.jsonl" "" IP2P_DATA_BASE_URL
      ;;
    pokemon-captions)
      fetch "$CAPTIONS_URL" "$DIR/pokemon-blip-captions-en-ja.parquet" "" POKEMON_CAPTIONS_URL
      ;;
    *) die "unknown dataset $name; choose from $NAMES" ;;
  esac
done
