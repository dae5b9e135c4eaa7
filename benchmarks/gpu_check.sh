#!/usr/bin/env bash
# The engine on one GPU next to the CPU (README "GPU check"): a ~1B-parameter synthetic family,
# FFG sweep and thresholds, OTA+FFG (full and rank-1), TIES, linear and the empirical Fisher on
# cuda and on cpu, timed, with the largest difference between the two in ulps. Made for the
# device tool's machines: their own PyTorch, transformers, safetensors and PyYAML, this working
# tree's src/ on PYTHONPATH, no network; at most 8 minutes on one H100/H200.
#   bash benchmarks/gpu_check.sh            (PARAMS=2e8 for a smaller family; OUT: where it works)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c 'import torch, transformers, safetensors, yaml, tqdm' \
  || { echo "gpu_check: needs torch, transformers, safetensors, pyyaml and tqdm" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec python3 benchmarks/gpu_check.py "${OUT:-/tmp}/gpu_check" --params "${PARAMS:-1e9}" --quiet "$@"
