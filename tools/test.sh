#!/usr/bin/env bash
# Set up (idempotent), install what only the tests need, then run the whole suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh

# System tools the tests use as independent witnesses, from Debian's packages:
#   ffprobe (ffmpeg) checks what we encode; chromium runs the browser test through
#   the PyPI playwright package. Never `playwright install`: it downloads its own
#   browser from outside the package registries.
need=()
command -v ffprobe >/dev/null 2>&1 || need+=(ffmpeg)
[ -x /usr/bin/chromium ] || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test: installing ${need[*]}"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "test: ${need[*]} not found; install with your package manager (tests that need them will skip)" >&2
  fi
fi

exec .venv/bin/python -m pytest "$@"
