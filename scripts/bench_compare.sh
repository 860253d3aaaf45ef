#!/usr/bin/env bash
# Side-by-side benchmark: elastica vs PyTorch on the same Llama config, threads and machine,
# in one run. Needs a Python with torch + transformers (PYTHON, default python3); never a
# test dependency. PyTorch runs first; `elastica bench` then prints its tables (one row per
# fused kernel, before/after) with the ratio to those PyTorch figures.
#   scripts/bench_compare.sh [THREADS] [SEQ]
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${1:-$(nproc)}
SEQ=${2:-128}
PY=${PYTHON:-python3}
cargo build --release --quiet
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
"$PY" scripts/bench_torch.py --threads "$THREADS" --seq "$SEQ" > "$tmp/torch.json"
echo "PyTorch: $(cat "$tmp/torch.json")" >&2
./target/release/elastica bench all --threads "$THREADS" --seq "$SEQ" --torch "$tmp/torch.json" --json "$tmp/elastica.json"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
