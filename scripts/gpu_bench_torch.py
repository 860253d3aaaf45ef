#!/usr/bin/env python3
"""PyTorch's side of `elastica bench --backend torch` (scripts/gpu_check.sh runs both).

Same shape, batch and sequence as the elastica run: transformers' Qwen2ForCausalLM (or
Llama) with random weights, f32 master weights under bf16 autocast (or plain f32), sdpa
attention, torch.optim.AdamW(fused=True) on CUDA, grad clipping at 1.0, mean loss over
labels = input ids. Prints ONE JSON line:
  train_tok_s, train_step_s   tokens/s of full training steps (forward, backward, clip, AdamW)
  forward_tok_s               no-grad forward (bf16 autocast), tokens/s
  generate_b1_tok_s           greedy generate, batch 1, 16-token prompt, --gen-tokens new tokens
                              (min_new_tokens = max_new_tokens: no early stop), KV cache
  max_memory_reserved_mib, max_memory_allocated_mib   torch.cuda figures over the training run
  params, gpu, torch, transformers, mfu_train (6 N tok/s / --peak-tflops)
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import transformers


def cli():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    ap.add_argument("--model-type", choices=["qwen2", "llama"], default="qwen2")
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--hidden", type=int, default=896)
    ap.add_argument("--heads", type=int, default=14)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--ff", type=int, default=4864)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--tie-embeddings", action="store_true")
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    return ap.parse_args()


def main():
    a = cli()
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    common = dict(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.ff,
                  num_hidden_layers=a.layers, num_attention_heads=a.heads,
                  num_key_value_heads=a.kv_heads, max_position_embeddings=32768,
                  tie_word_embeddings=a.tie_embeddings, rms_norm_eps=1e-6,
                  bos_token_id=0, eos_token_id=1, pad_token_id=2)
    if a.model_type == "qwen2":
        cfg = transformers.Qwen2Config(**common)
        cls = transformers.Qwen2ForCausalLM
    else:
        cfg = transformers.LlamaConfig(**common)
        cls = transformers.LlamaForCausalLM
    torch.manual_seed(0)
    model = cls._from_config(cfg, attn_implementation="sdpa", dtype=torch.float32).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), eps=1e-8,
                            weight_decay=0.0, fused=cuda)
    g = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(2, a.vocab, (a.batch, a.seq), generator=g).to(dev)
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.dtype == "bf16")

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    def step():
        with amp:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    model.train()
    for _ in range(a.warmup):
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    sync()
    train_s = time.perf_counter() - t0
    out = {
        "impl": "pytorch", "torch": torch.__version__, "transformers": transformers.__version__,
        "gpu": torch.cuda.get_device_name(dev) if cuda else "cpu", "dtype": a.dtype,
        "params": n_params, "seq": a.seq, "batch": a.batch, "steps": a.steps,
        "train_tok_s": a.batch * a.seq * a.steps / train_s, "train_step_s": train_s / a.steps,
    }
    if cuda:
        out["max_memory_reserved_mib"] = torch.cuda.max_memory_reserved(dev) / 2**20
        out["max_memory_allocated_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
    out["mfu_train"] = 6 * n_params * out["train_tok_s"] / (a.peak_tflops * 1e12)
    model.eval()
    with torch.no_grad(), amp:
        model(input_ids=ids)
        sync()
        t0 = time.perf_counter()
        for _ in range(a.steps):
            model(input_ids=ids)
        sync()
        out["forward_tok_s"] = a.batch * a.seq * a.steps / (time.perf_counter() - t0)
        prompt = ids[:1, :16]
        kw = dict(max_new_tokens=a.gen_tokens, min_new_tokens=a.gen_tokens, do_sample=False,
                  pad_token_id=2)
        model.generate(prompt, **kw)
        sync()
        t0 = time.perf_counter()
        model.generate(prompt, **kw)
        sync()
        out["generate_b1_tok_s"] = a.gen_tokens / (time.perf_counter() - t0)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
