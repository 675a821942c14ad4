#!/usr/bin/env bash
# CUDA check of cryoAI on this machine's first GPU: CPU-vs-CUDA agreement of one training step, then
# training and prediction images/s at 64 and 128 px. Prints one JSON line; stops after 8 minutes.
# Usage: bash benchmarks/gpu_check.sh [PYTHON]   (default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" timeout 480 "${1:-python3}" benchmarks/gpu_check.py
