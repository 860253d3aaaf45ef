#!/usr/bin/env bash
# Build the elastica binary that scripts/gpu_check.sh runs on a GPU machine with no cargo:
# `--features torch`, linked against the PyPI wheel torch==2.11.0 (what tch 0.24 pins), and
# copied to target/gpu/elastica (ignored by git; carry that folder to the GPU machine).
# At run time the GPU machine's own PyTorch 2.11 provides libtorch (gpu_check.sh sets
# LD_LIBRARY_PATH from `python3 -c 'import torch'`).
#   scripts/build_gpu_binary.sh            # venv at $TORCH_VENV (default /work/venv-torch)
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VENV=${TORCH_VENV:-/work/venv-torch}
if ! "$TORCH_VENV/bin/python" -c 'import torch; assert torch.__version__.startswith("2.11.0")' 2>/dev/null; then
    python3 -m venv "$TORCH_VENV"
    "$TORCH_VENV/bin/pip" install --quiet torch==2.11.0
fi
PATH="$TORCH_VENV/bin:$PATH" LIBTORCH_USE_PYTORCH=1 cargo build --release --features torch
mkdir -p target/gpu
cp target/release/elastica target/gpu/elastica
strip target/gpu/elastica
echo "built target/gpu/elastica ($(du -h target/gpu/elastica | cut -f1)); carry target/gpu" >&2
