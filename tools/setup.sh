#!/usr/bin/env bash
# Set up previz in ./.venv (idempotent): system tools, Python packages, the embedded pack.
set -euo pipefail
cd "$(dirname "$0")/.."

# ffprobe (Debian's ffmpeg) is how the tests check what we encode, independently of PyAV.
if ! command -v ffprobe >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ffmpeg (for ffprobe)"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null
  else
    echo "setup: ffprobe not found; install ffmpeg with your package manager (tests that need it will skip)" >&2
  fi
fi

# Debian's Chromium runs the browser test (tests/test_browser.py) through the PyPI playwright
# package (a dev extra). Never `playwright install`: it downloads its own browser from outside
# the package registries.
if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing chromium (for the browser test)"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: chromium not found; install it with your package manager (the browser test will skip)" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# torch is pinned on the command line too: a bare "torch" would fetch CUDA wheels.
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q "torch==2.13.0" -e ".[cpu,dev]"

# The embedded pack (untrained, deterministic) is built here rather than shipped:
# random weights do not belong in git history, and the build takes seconds.
PREVIZ_HOME="${PREVIZ_HOME:-$HOME/.cache/previz}"
if [ ! -f "$PREVIZ_HOME/packs/previz-tiny/previz_pack.json" ]; then
  .venv/bin/python tools/make_tiny_pack.py
fi
