#!/usr/bin/env bash
# Set up previz in ./.venv (idempotent): Python packages and the embedded pack.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# torch is pinned on the command line too: a bare "torch" would fetch CUDA wheels.
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# setuptools' "Editable installation" banner is advice for package authors, not for someone installing previz.
# The ray extra is for the tests (the Ray executor runs against a real local instance); users need not install it.
PYTHONWARNINGS="ignore:Editable installation" .venv/bin/python -m pip install -q "torch==2.13.0" -e ".[cpu,dev,ray,vsr]"
# The learned VSR's loader, without its torchvision requirement (see the vsr extra in pyproject.toml).
.venv/bin/python -m pip install -q --no-deps "spandrel>=0.4.2,<0.5"

# The default pack, previz-backlot, is trained and ships inside the package
# (previz/packs_builtin); the untrained previz-tiny is built only when asked for.
