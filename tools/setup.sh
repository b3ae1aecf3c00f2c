#!/usr/bin/env bash
# Set up previz in ./.venv (idempotent): Python packages and the embedded pack.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# torch is pinned on the command line too: a bare "torch" would fetch CUDA wheels.
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q "torch==2.13.0" -e ".[cpu,dev,ray]"

# The embedded pack (untrained, deterministic) is built here rather than shipped:
# random weights do not belong in git history, and the build takes seconds.
PREVIZ_HOME="${PREVIZ_HOME:-$HOME/.cache/previz}"
if [ ! -f "$PREVIZ_HOME/packs/previz-tiny/previz_pack.json" ]; then
  .venv/bin/python tools/make_tiny_pack.py
fi
