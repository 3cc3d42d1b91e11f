# shellcheck shell=bash
# Resumable, verified downloads with curl, sourced by scripts/download_*.sh (not run by itself).
#
#   fetch URL DEST [SHA256 [URL_VARIABLE]]
#
# - DEST already there: checked against SHA256 when one is given (SKIP_VERIFY=1 skips that), then kept.
# - Otherwise the server is asked for the file's headers first, so a machine without network fails
#   at once with one line. The data then goes to DEST.part, resuming what an earlier run left there
#   (curl -C -); its size is checked against the server's Content-Length and its SHA256 when one is
#   given, and only then is it renamed to DEST. DEST is never a partial file.
# - Every failure prints exactly one line "<script>: error: ..." on stderr and exits 1; progress
#   notes go to stdout, the progress bar to stderr only when stderr is a terminal.
# URL_VARIABLE names the environment variable that overrides the URL's base, for the error message.

die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit 1
}

note() {
  printf '%s: %s\n' "$PROG" "$*"
}

# What a curl exit status means, in words.
curl_reason() {
  case $1 in
    5) echo "cannot resolve the proxy" ;;
    6) echo "cannot resolve the host name (no network or no DNS)" ;;
    7) echo "cannot connect to the server (no network, server down, or blocked)" ;;
    18) echo "the transfer ended early" ;;
    22) echo "the server answered with an HTTP error" ;;
    23) echo "cannot write the file (disk full or no permission?)" ;;
    28) echo "timed out" ;;
    33) echo "the server cannot resume; delete the .part file and run again" ;;
    35 | 60) echo "TLS handshake or certificate problem" ;;
    56) echo "the connection broke during the transfer" ;;
    *) echo "curl exit status $1" ;;
  esac
}

sha256_of() {
  if command -v sha256sum >/dev/null; then
    sha256sum "$1" | cut -d' ' -f1
  else
    shasum -a 256 "$1" | cut -d' ' -f1
  fi
}

size_of() {
  wc -c <"$1" | tr -d ' '
}

# Ask for the headers of URL (following redirects). Sets REMOTE_SIZE to the final Content-Length
# ("" when unknown). Dies with one line when the server cannot be reached or refuses the file.
probe() {
  local url=$1 variable=$2 headers rc=0 status
  headers=$(curl --silent --head --location --connect-timeout 20 --max-time 120 "$url") || rc=$?
  if ((rc != 0)); then
    die "cannot reach $url: $(curl_reason "$rc"); check the network or proxy${variable:+, or set $variable to a mirror}"
  fi
  # Headers of every hop, redirects first: keep the status and length of the last response.
  status=$(printf '%s\n' "$headers" | awk 'toupper($1) ~ /^HTTP\// {code = $2} END {print code}')
  REMOTE_SIZE=$(printf '%s\n' "$headers" | tr -d '\r' |
    awk 'toupper($1) ~ /^HTTP\// {n = ""} tolower($1) == "content-length:" {n = $2} END {print n}')
  case $status in
    2*) ;;
    405 | 501) REMOTE_SIZE="" ;; # the server does not answer HEAD; the download will tell
    *) die "$url answered HTTP ${status:-without a status}; the file may have moved${variable:+, set $variable to a mirror}" ;;
  esac
}

fetch() {
  local url=$1 dest=$2 sha=${3:-} variable=${4:-} part rc=0 actual
  part="$dest.part"
  if [[ -f $dest ]]; then
    if [[ -n $sha && ${SKIP_VERIFY:-0} != 1 ]]; then
      actual=$(sha256_of "$dest")
      [[ $actual == "$sha" ]] || die "$dest has SHA256 $actual, expected $sha; delete it and run again"
      note "$dest is already there (SHA256 verified)"
    else
      note "$dest is already there"
    fi
    return 0
  fi
  probe "$url" "$variable"
  mkdir -p "$(dirname "$dest")" || die "cannot create the folder of $dest"
  if [[ -n $REMOTE_SIZE && -f $part ]] && (($(size_of "$part") > REMOTE_SIZE)); then
    note "$part is larger than the file on the server (it changed?); starting over"
    rm -f "$part"
  fi
  if [[ -z $REMOTE_SIZE || ! -f $part || $(size_of "$part") != "$REMOTE_SIZE" ]]; then
    note "downloading $url -> $dest${REMOTE_SIZE:+ ($((REMOTE_SIZE / 1000000)) MB)}"
    local progress=(--silent)
    [[ -t 2 ]] && progress=(--progress-bar)
    curl --fail --location --retry 3 --retry-delay 5 --connect-timeout 20 --continue-at - \
      "${progress[@]}" --output "$part" "$url" || rc=$?
    ((rc == 0)) || die "download of $url stopped: $(curl_reason "$rc"); run again to resume from $part"
  fi
  if [[ -n $REMOTE_SIZE && $(size_of "$part") != "$REMOTE_SIZE" ]]; then
    die "$part has $(size_of "$part") bytes, the server announced $REMOTE_SIZE; run again to resume (or delete it)"
  fi
  if [[ -n $sha ]]; then
    actual=$(sha256_of "$part")
    if [[ $actual != "$sha" ]]; then
      rm -f "$part"
      die "$url gave SHA256 $actual, expected $sha; the download was deleted, run again (or check the URL)"
    fi
  fi
  mv -f "$part" "$dest" || die "cannot rename $part to $dest"
  note "saved $dest${sha:+ (SHA256 verified)}"
}
