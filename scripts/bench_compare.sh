#!/usr/bin/env bash
# Side-by-side benchmark: elastica vs PyTorch on the same Llama config, threads and machine,
# in one run. Needs a Python with torch + transformers (PYTHON, default python3); never a
# test dependency.
#   scripts/bench_compare.sh [THREADS] [SEQ]
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${1:-$(nproc)}
SEQ=${2:-128}
PY=${PYTHON:-python3}
cargo build --release --quiet
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
ours=$(./target/release/elastica bench all --threads "$THREADS" --seq "$SEQ")
theirs=$("$PY" scripts/bench_torch.py --threads "$THREADS" --seq "$SEQ")
"$PY" - "$ours" "$theirs" <<'PYEOF'
import json, sys
o, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
rows = [
    ("train tok/s", o.get("train_tok_s"), max(t["train_tok_s_eager"], t["train_tok_s_sdpa"])),
    ("forward tok/s", o.get("forward_tok_s"), max(t["forward_tok_s_eager"], t["forward_tok_s_sdpa"])),
    ("generate b1 tok/s", o.get("generate_b1_tok_s"), t["generate_tok_s_b1"]),
    ("generate b16 tok/s", o.get("generate_b16_tok_s"), t["generate_tok_s_b16"]),
    ("peak RSS MB", o.get("peak_rss_mb"), t["peak_rss_mb"]),
    ("sgemm 2048^3 GFLOP/s", o.get("sgemm_gflops_2048"), t["sgemm_gflops_2048"]),
]
print(f"| metric | elastica | PyTorch | ratio |\n|---|---|---|---|")
for name, a, b in rows:
    print(f"| {name} | {a:.1f} | {b:.1f} | {a / b:.2f}x |")
print(f"\nelastica train MFU {o.get('train_mfu', 0):.3f} (6N + attention FLOPs over its own sgemm peak); "
      f"PyTorch MFU {t['mfu_train_sdpa']:.3f}; threads {o['threads']}/{t['threads']}, seq {o['seq']}, batch {o['batch']}")
PYEOF
