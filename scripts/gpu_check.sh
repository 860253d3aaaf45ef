#!/usr/bin/env bash
# The GPU check of issue 19, item 7, in one run (well under 8 minutes on an H100/H200):
#  (a) parity, GPU (libtorch, f32) vs CPU (fused path), on the tiny transformers fixtures:
#      mean NLL, 10 SFT steps' losses, greedy tokens, `rates` bits per token; bf16 NLL beside
#      them; 10 SFT steps with --grad-checkpoint against the plain backward on the device;
#  (b) a Qwen2-0.5B-shaped random model (24 layers, hidden 896, 14 heads, 2 KV heads, ff 4864,
#      vocab 151936, tied, seq 1024) in bf16: elastica's training step, forward and batch-1
#      generation, side by side with PyTorch on the same GPU (scripts/gpu_bench_torch.py:
#      transformers' Qwen2 under bf16 autocast, sdpa, AdamW(fused=True), same batch and seq);
#      and elastica's training step again with --grad-checkpoint (tok/s and memory);
#  (c) an align -> perturb chain (two `train` runs, the second from the first's checkpoint)
#      with eval-loss after each, on the GPU and on the CPU. (The rebound grid itself runs on
#      the CPU until the experiments take a device; see README, GPUs.)
# Writes gpu_check.json and gpu_check.md (and the raw logs) into OUTDIR.
#
# Needs no cargo: it runs a binary built elsewhere by scripts/build_gpu_binary.sh
# (target/gpu/elastica, or ELASTICA_BIN), and finds libtorch in the local python3's torch
# (PyTorch 2.11). Usage:
#   scripts/gpu_check.sh [OUTDIR]                   # default: $OUT, else ./gpu-check
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_SMALL=1 scripts/gpu_check.sh /tmp/dry   # dry run, no GPU
set -euo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:-${OUT:-gpu-check}}
BIN=${ELASTICA_BIN:-target/gpu/elastica}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
SMALL=${GPU_CHECK_SMALL:-0}
BATCH=${GPU_CHECK_BATCH:-8}
PY=${PYTHON:-python3}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
LOG="$OUTDIR/gpu_check.log"
: >"$LOG"
say() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$LOG" >&2; }

[ -x "$BIN" ] || { echo "no elastica binary at $BIN: build it with scripts/build_gpu_binary.sh" >&2; exit 1; }
TORCH_LIB=$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
say "libtorch from $TORCH_LIB ($("$PY" -c 'import torch; print(torch.__version__)')); device $DEVICE"
"$BIN" --version >>"$LOG" 2>&1 || { echo "the binary does not start; see $LOG" >&2; cat "$LOG" >&2; exit 1; }
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$OUTDIR/gpu.txt" 2>&1 || true

FIX=tests/fixtures
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
DEV=(--device "$DEVICE" --backend torch)
# Prompts for greedy generation: the SFT fixture's prompts.
"$PY" -c '
import json, sys
for line in open(sys.argv[1]):
    print(json.dumps({"prompt": json.loads(line)["prompt"]}))' "$FIX/sft/data.jsonl" >"$WORK/prompts.jsonl"
TRAIN=(--data "$FIX/sft/data.jsonl" --template raw --batch-size 2 --grad-accum 2 --max-steps 10
       --lr 1e-3 --weight-decay 0.01 --no-shuffle)

# (a) parity on the tiny fixtures.
for m in tiny-llama tiny-qwen2 tiny-gemma; do
    say "(a) parity: $m"
    M="$FIX/models/$m"
    "$BIN" eval-loss --model "$M" --data "$FIX/sft/data.jsonl" --template raw >"$WORK/$m.nll.cpu.json" 2>>"$LOG"
    "$BIN" eval-loss --model "$M" --data "$FIX/sft/data.jsonl" --template raw "${DEV[@]}" >"$WORK/$m.nll.dev.json" 2>>"$LOG"
    "$BIN" eval-loss --model "$M" --data "$FIX/sft/data.jsonl" --template raw "${DEV[@]}" --dtype bf16 >"$WORK/$m.nll.bf16.json" 2>>"$LOG"
    "$BIN" generate --model "$M" --prompts "$WORK/prompts.jsonl" --out "$WORK/$m.gen.cpu.jsonl" --template raw --max-new-tokens 16 2>>"$LOG"
    "$BIN" generate --model "$M" --prompts "$WORK/prompts.jsonl" --out "$WORK/$m.gen.dev.jsonl" --template raw --max-new-tokens 16 "${DEV[@]}" 2>>"$LOG"
    "$BIN" train --model "$M" "${TRAIN[@]}" --out "$WORK/$m.sft.cpu" >>"$LOG" 2>&1
    "$BIN" train --model "$M" "${TRAIN[@]}" --out "$WORK/$m.sft.dev" "${DEV[@]}" >>"$LOG" 2>&1
    "$BIN" train --model "$M" "${TRAIN[@]}" --out "$WORK/$m.sft.ckpt" "${DEV[@]}" --grad-checkpoint >>"$LOG" 2>&1
    "$BIN" rates --models "$M" --data "d=$FIX/sft/data.jsonl" --out "$WORK/$m.rates.cpu" >>"$LOG" 2>&1
    "$BIN" rates --models "$M" --data "d=$FIX/sft/data.jsonl" --out "$WORK/$m.rates.dev" "${DEV[@]}" >>"$LOG" 2>&1
done

# (b) the 0.5B shape, elastica then PyTorch, same GPU, same batch and seq.
if [ "$SMALL" = 1 ]; then
    SHAPE=(--layers 2 --hidden 64 --heads 4 --kv-heads 2 --ff 128 --vocab 1000 --seq 64)
    PYSHAPE=(--layers 2 --hidden 64 --heads 4 --kv-heads 2 --ff 128 --vocab 1000 --seq 64)
    STEPS=(--steps 2 --warmup 1 --gen-tokens 8)
else
    SHAPE=(--layers 24 --hidden 896 --heads 14 --kv-heads 2 --ff 4864 --vocab 151936 --seq 1024)
    PYSHAPE=("${SHAPE[@]}")
    STEPS=(--steps 10 --warmup 3 --gen-tokens 128)
fi
say "(b) bench: elastica, ${SHAPE[*]} batch $BATCH bf16"
"$BIN" bench train "${SHAPE[@]}" --model-type qwen2 --tie-embeddings --batch "$BATCH" "${STEPS[@]}" \
    "${DEV[@]}" --dtype bf16 --json "$WORK/bench.elastica.json" >>"$LOG" 2>&1
say "(b) bench: PyTorch"
PEAK=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1])).get("peak_tflops") or 989)' "$WORK/bench.elastica.json")
"$PY" scripts/gpu_bench_torch.py --device "$DEVICE" --dtype bf16 --model-type qwen2 --tie-embeddings \
    "${PYSHAPE[@]}" --batch "$BATCH" "${STEPS[@]}" --peak-tflops "$PEAK" >"$WORK/bench.torch.json" 2>>"$LOG"
say "(b) bench: elastica with --grad-checkpoint"
"$BIN" bench train "${SHAPE[@]}" --model-type qwen2 --tie-embeddings --batch "$BATCH" "${STEPS[@]}" \
    "${DEV[@]}" --dtype bf16 --grad-checkpoint --json "$WORK/bench.elastica.ckpt.json" >>"$LOG" 2>&1

# (c) align -> perturb on the device and on the CPU.
say "(c) align -> perturb chain"
M="$FIX/models/tiny-qwen2"
for side in cpu dev; do
    if [ $side = dev ]; then X=("${DEV[@]}"); else X=(); fi
    "$BIN" train --model "$M" "${TRAIN[@]}" --max-steps 6 --out "$WORK/chain.$side.aligned" "${X[@]}" >>"$LOG" 2>&1
    "$BIN" train --model "$WORK/chain.$side.aligned" --data "$FIX/sft/data.jsonl" --template raw \
        --batch-size 4 --grad-accum 1 --max-steps 4 --lr 5e-4 --no-shuffle \
        --out "$WORK/chain.$side.perturbed" "${X[@]}" >>"$LOG" 2>&1
    for stage in aligned perturbed; do
        "$BIN" eval-loss --model "$WORK/chain.$side.$stage" --data "$FIX/sft/data.jsonl" --template raw \
            "${X[@]}" >"$WORK/chain.$side.$stage.nll.json" 2>>"$LOG"
    done
done

say "summary"
"$PY" - "$WORK" "$OUTDIR" "$DEVICE" <<'PYEOF'
import json, os, sys
work, outdir, device = sys.argv[1:4]
rd = lambda p: json.load(open(os.path.join(work, p)))
lines = lambda p: [json.loads(l) for l in open(os.path.join(work, p)) if l.strip()]
rel = lambda a, b: abs(a - b) / max(abs(a), 1e-30)
res = {"device": device, "parity": {}, "checks": []}
gpu = os.path.join(outdir, "gpu.txt")
res["gpu"] = open(gpu).read().strip() if os.path.exists(gpu) else None
def check(name, ok, detail):
    res["checks"].append({"check": name, "ok": bool(ok), "detail": detail})
for m in ["tiny-llama", "tiny-qwen2", "tiny-gemma"]:
    c, d, b = rd(f"{m}.nll.cpu.json")["mean_nll"], rd(f"{m}.nll.dev.json")["mean_nll"], rd(f"{m}.nll.bf16.json")["mean_nll"]
    lc = [l["loss"] for l in lines(f"{m}.sft.cpu/train_log.jsonl")]
    ld = [l["loss"] for l in lines(f"{m}.sft.dev/train_log.jsonl")]
    gc = [r["response"] for r in lines(f"{m}.gen.cpu.jsonl")]
    gd = [r["response"] for r in lines(f"{m}.gen.dev.jsonl")]
    worst = max(rel(x, y) for x, y in zip(lc, ld))
    same = sum(x == y for x, y in zip(gc, gd))
    lk = [l["loss"] for l in lines(f"{m}.sft.ckpt/train_log.jsonl")]
    worst_ckpt = max(rel(x, y) for x, y in zip(ld, lk))
    rc, rdv = (rd(f"{m}.rates.{s}/rates.json")[0]["bits_per_token"] for s in ["cpu", "dev"])
    res["parity"][m] = {"nll_cpu": c, "nll_device_f32": d, "nll_device_bf16": b, "sft_losses_cpu": lc,
                        "sft_losses_device": ld, "sft_worst_rel": worst, "greedy_equal": f"{same}/{len(gc)}"}
    check(f"{m}: mean NLL, device f32 vs CPU, rel < 1e-5", rel(c, d) < 1e-5, f"{c:.8f} vs {d:.8f} ({rel(c, d):.1e})")
    check(f"{m}: bf16 NLL within 2% of f32", rel(c, b) < 2e-2, f"{b:.6f} ({rel(c, b):.1e})")
    check(f"{m}: 10 SFT losses, rel < 1e-4", len(lc) == len(ld) == 10 and worst < 1e-4, f"worst {worst:.1e}")
    check(f"{m}: greedy generations equal", same == len(gc), f"{same}/{len(gc)} prompts")
    check(f"{m}: 10 SFT losses with --grad-checkpoint vs without, rel < 1e-5", len(lk) == 10 and worst_ckpt < 1e-5, f"worst {worst_ckpt:.1e}")
    check(f"{m}: rates bits/token, device vs CPU coder, rel < 1e-5", rel(rc, rdv) < 1e-5, f"{rc:.6f} vs {rdv:.6f}")
e, t = rd("bench.elastica.json"), rd("bench.torch.json")
k = rd("bench.elastica.ckpt.json")
res["bench"] = {"elastica": e, "pytorch": t, "elastica_grad_checkpoint": k}
ratio = lambda k, k2=None: e[k] / t[k2 or k] if t.get(k2 or k) else None
res["bench"]["ratios"] = {"train": ratio("train_tok_s"), "forward": ratio("forward_tok_s"),
                          "generate_b1": ratio("generate_b1_tok_s")}
chain = {s: {st: rd(f"chain.{s}.{st}.nll.json")["mean_nll"] for st in ["aligned", "perturbed"]} for s in ["cpu", "dev"]}
res["chain"] = chain
for st in ["aligned", "perturbed"]:
    r = rel(chain["cpu"][st], chain["dev"][st])
    check(f"chain: {st} model's NLL, device vs CPU, rel < 1e-4", r < 1e-4, f"{chain['cpu'][st]:.6f} vs {chain['dev'][st]:.6f}")
json.dump(res, open(os.path.join(outdir, "gpu_check.json"), "w"), indent=1)
md = [f"# elastica GPU check ({device}; {res['gpu'] or 'no nvidia-smi'})", "",
      "| check | ok | detail |", "|---|---|---|"]
md += [f"| {c['check']} | {'yes' if c['ok'] else '**NO**'} | {c['detail']} |" for c in res["checks"]]
fmt = lambda x, p=0: "-" if x is None else f"{x:.{p}f}"
pct = lambda x: "-" if x is None else f"{x * 100:.1f}%"
md += ["", f"## Qwen2-0.5B shape, bf16, batch {e['batch']} x seq {e['seq']}: elastica vs PyTorch on the same device", "",
       "| measure | elastica (libtorch) | PyTorch (transformers, autocast, sdpa, fused AdamW) | ratio |", "|---|---|---|---|",
       f"| training tok/s | {fmt(e['train_tok_s'])} | {fmt(t['train_tok_s'])} | {fmt(res['bench']['ratios']['train'], 2)} |",
       f"| MFU (6 N tok/s over peak) | {pct(e.get('mfu_train'))} (peak {e.get('peak_tflops')} TFLOP/s, {e.get('peak_source')}) | {pct(t.get('mfu_train') if e.get('mfu_train') is not None else None)} (same peak) | |",
       f"| forward tok/s | {fmt(e['forward_tok_s'])} | {fmt(t['forward_tok_s'])} | {fmt(res['bench']['ratios']['forward'], 2)} |",
       f"| greedy generation, batch 1, tok/s | {fmt(e['generate_b1_tok_s'], 1)} | {fmt(t['generate_b1_tok_s'], 1)} | {fmt(res['bench']['ratios']['generate_b1'], 2)} |",
       f"| GPU memory, MiB | {fmt(e.get('gpu_mem_mib_after_train'))} (nvidia-smi, process, after training) | {fmt(t.get('max_memory_reserved_mib'))} (max reserved; allocated {fmt(t.get('max_memory_allocated_mib'))}) | |",
       f"| with --grad-checkpoint: training tok/s, GPU memory MiB | {fmt(k['train_tok_s'])}, {fmt(k.get('gpu_mem_mib_after_train'))} | | |",
       "", f"params: elastica {e['params']}, PyTorch {t['params']}"]
open(os.path.join(outdir, "gpu_check.md"), "w").write("\n".join(md) + "\n")
print("\n".join(md))
bad = [c for c in res["checks"] if not c["ok"]]
sys.exit(1 if bad else 0)
PYEOF
