#!/usr/bin/env bash
# Train (or resume) the backlot pack on a lent GPU machine: one prepared run.
#
# That machine has torch and transformers but no diffusers and no internet, so
# what it needs travels with the working tree (see the device tool's README):
#   .whl/        diffusers and importlib_metadata wheels (pip download --no-deps ...)
#   .devcarry/   minilm/ (the MiniLM text encoder, fp16 copy) and, to resume, run/ (a checkpoint)
# Without a run/ it starts from the shipped pack (tools/train_backlot.py --from-pack).
# It trains for the given minutes, then splits the checkpoint into $OUT in
# parts small enough to come back; join them with `cat run.tar.part-* | tar x`,
# and export with `python tools/train_backlot.py --run run --export previz/packs_builtin/previz-backlot`.
#
# Mind the device tool's 64 MiB limit on what travels: the tracked tree (about
# 20 MB with the shipped pack), the diffusers wheel (6.4 MB) and an fp16 MiniLM
# (45 MB) already exceed it.  Shrink the MiniLM copy first (its 30,522-row word
# embedding is half of it; backlot captions use a few hundred of those rows).
#
#   bash tools/gpu_train_backlot.sh AE_MINUTES DENOISER_MINUTES [TRAIN_ARGS...]
# e.g. `bash tools/gpu_train_backlot.sh 0 8 --context-attention block-causal` fine-tunes the denoiser into a
# block-causal student (previz/causal_context.py).
set -uo pipefail
ae=${1:-1.5}; den=${2:-5}; shift 2 2>/dev/null || shift $#
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
mkdir -p /tmp/run
[ -d .devcarry/run ] && cp -r .devcarry/run/. /tmp/run/
from=(); [ -f /tmp/run/state.json ] || from=(--from-pack previz/packs_builtin/previz-backlot)
timeout $(( ${ae%.*} * 60 + ${den%.*} * 60 + 180 )) python3 tools/train_backlot.py --run /tmp/run --device cuda \
  --ae-minutes "$ae" --denoiser-minutes "$den" --batch 64 --ae-batch 48 --pool 1024 --refresh 6 --save-every 2 \
  --text-dir .devcarry/minilm "${from[@]}" "$@" 2>&1 | grep -v "Loading weights" | tee "$OUT/train.log"
(cd /tmp && tar cf - run) | split -b 15M - "$OUT/run.tar.part-"
ls -la "$OUT"
