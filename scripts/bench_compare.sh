#!/usr/bin/env bash
# Side-by-side benchmark: elastica vs PyTorch on the same Llama config, threads and machine,
# in one run. Needs a Python with torch + transformers (PYTHON, default python3); never a
# test dependency. PyTorch runs first; `elastica bench` then prints its tables (one row per
# fused kernel, before/after) with the ratio to those PyTorch figures.
#   scripts/bench_compare.sh [THREADS] [SEQ]
# ROUNDS=n (default 2) alternates PyTorch and elastica n times and ends with a summary of
# each side's best round: on a shared VM the host's speed can move 2x between two runs
# minutes apart, and alternating keeps one side from getting all the fast minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${1:-$(nproc)}
SEQ=${2:-128}
ROUNDS=${ROUNDS:-2}
PY=${PYTHON:-python3}
cargo build --release --quiet
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for r in $(seq 1 "$ROUNDS"); do
    echo "== round $r of $ROUNDS; load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    "$PY" scripts/bench_torch.py --threads "$THREADS" --seq "$SEQ" > "$tmp/torch$r.json"
    echo "PyTorch: $(cat "$tmp/torch$r.json")" >&2
    ./target/release/elastica bench all --threads "$THREADS" --seq "$SEQ" \
        --torch "$tmp/torch$r.json" --json "$tmp/elastica$r.json"
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
"$PY" - "$tmp" "$ROUNDS" <<'PYEOF'
import json, sys
tmp, rounds = sys.argv[1], int(sys.argv[2])
torch = [json.load(open(f"{tmp}/torch{r}.json")) for r in range(1, rounds + 1)]
ours = [json.load(open(f"{tmp}/elastica{r}.json")) for r in range(1, rounds + 1)]
def best(runs, *keys):
    vals = [max(run[k] for k in keys if k in run) for run in runs if any(k in run for k in keys)]
    return max(vals) if vals else None
rows = [
    ("training step", best(torch, "train_tok_s_eager", "train_tok_s_sdpa"), best(ours, "train_tok_s")),
    ("forward-only scoring", best(torch, "forward_tok_s_eager", "forward_tok_s_sdpa"), best(ours, "forward_tok_s")),
    ("generation, batch 1", best(torch, "generate_tok_s_b1"), best(ours, "generate_b1_tok_s")),
    ("generation, batch 16", best(torch, "generate_tok_s_b16"), best(ours, "generate_b16_tok_s")),
]
print(f"## Summary: best of {rounds} alternating round(s) per side, tok/s\n")
print("| measure | PyTorch | elastica | ratio |\n|---|---|---|---|")
for name, t, e in rows:
    if t and e:
        print(f"| {name} | {t:.0f} | {e:.0f} | {e / t:.2f}x |")
rss_t = [run["peak_rss_mb"] for run in torch if "peak_rss_mb" in run]
rss_e = [run["train_peak_rss_mb"] for run in ours if "train_peak_rss_mb" in run]
if rss_t and rss_e:
    print(f"| peak RSS of a training step, MB (largest round) | {max(rss_t):.0f} | {max(rss_e):.0f} | |")
PYEOF
