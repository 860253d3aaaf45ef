#!/usr/bin/env python3
"""PyTorch reference benchmark for elastica's model (never a test dependency).

    /work/venv/bin/python scripts/bench_torch.py --threads 2

The model and the training step are the ones `elastica bench train` times: LlamaForCausalLM,
4 layers, hidden 256, 4 heads (4 kv heads), intermediate 688, vocab 4096, untied embeddings,
float32, batch 8 x seq 128 of random token ids (fixed seed), labels = input ids.

One training step = forward with labels (transformers' mean causal-LM loss), backward,
torch.optim.AdamW step, zero_grad. It is timed twice, with eager attention and with sdpa.
Prints ONE JSON line:
  train_tok_s_eager, train_tok_s_sdpa   tokens/s of full training steps (batch*seq per step)
  forward_tok_s_eager, forward_tok_s_sdpa  tokens/s of a no_grad forward
  generate_tok_s_b1, generate_tok_s_b16    new tokens/s of greedy generate with KV cache
                                           (16-token prompts, 64 new tokens, no early stop, sdpa)
  peak_rss_mb                              ru_maxrss after the training runs
  sgemm_gflops_1024x256x688, sgemm_gflops_2048  torch.mm measured on the spot
  mfu_train_sdpa                           6 * params * train_tok_s_sdpa / sgemm 2048^3 rate
  params, torch, transformers, threads, seq, batch, steps, warmup
  loadavg_1m_at_start                      other load on the machine (figures are only honest near 0)
  dpo_tok_s_eager, dpo_tok_s_sdpa          tokens/s (both answers) of DPO steps on batch pairs, as
                                           `elastica bench dpo` times them (below)
  sft_same_tok_s_eager, sft_same_tok_s_sdpa  the SFT step on those same 2*batch sequences
  kto_tok_s_eager, kto_tok_s_sdpa          the KTO step on those pairs (below)

One DPO step (sigmoid loss, beta 0.1): forward the chosen and the rejected answers as one batch
of 2*batch sequences, each sequence's summed log-prob of its next tokens, loss = mean over pairs
of -log sigmoid(beta * ((lp_c - ref_c) - (lp_r - ref_r))) with the reference log-probs computed
once before timing (cached, as a DPO run does), backward, clip at 1, AdamW, zero_grad.
One KTO step: a no-grad forward over 2*batch mismatched sequences for z0 = max(0, mean of
their log-prob minus the reference's), then the DPO step's forward with the loss the mean over
the 2*batch answers of 1 - sigmoid(beta (r+ - z0)) and 1 - sigmoid(beta (z0 - r-)).
`--only dpo` times just these three (the DPO rows of BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import torch

import transformers
from transformers import LlamaConfig, LlamaForCausalLM


def cli() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads (default: all cores)")
    ap.add_argument("--seq", type=int, default=128, help="sequence length (default 128)")
    ap.add_argument("--batch", type=int, default=8, help="training batch size (default 8)")
    ap.add_argument("--steps", type=int, default=10, help="timed training steps per attention kind (default 10)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=["all", "dpo"], default="all", help="what to time (default all)")
    return ap.parse_args()


def config(seq: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=4096,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=max(512, seq + 128),
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )


def model(cfg: LlamaConfig, attn: str, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM._from_config(cfg, attn_implementation=attn, dtype=torch.float32)


def timed(step, steps: int, warmup: int) -> float:
    """Seconds of `steps` calls of `step` after `warmup` untimed ones."""
    for _ in range(warmup):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - t


def bench_train(cfg, attn, ids, steps, warmup, seed) -> float:
    m = model(cfg, attn, seed)
    m.train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.01)

    def step():
        loss = m(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return ids.numel() * steps / timed(step, steps, warmup)


def bench_forward(cfg, attn, ids, steps, warmup, seed) -> float:
    m = model(cfg, attn, seed).eval()
    with torch.no_grad():
        for _ in range(warmup):
            m(input_ids=ids)
        t = time.perf_counter()
        for _ in range(steps):
            m(input_ids=ids)
    return ids.numel() * steps / (time.perf_counter() - t)


def bench_generate(m, batch: int, seed: int, prompt_len=16, new=64, reps=2) -> float:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, m.config.vocab_size, (batch, prompt_len), generator=g)
    kw = dict(
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=new,
        min_new_tokens=new,
        pad_token_id=2,
        use_cache=True,
    )
    with torch.no_grad():
        m.generate(ids, **kw)  # warm-up
        t = time.perf_counter()
        for _ in range(reps):
            out = m.generate(ids, **kw)
        dt = time.perf_counter() - t
    assert out.shape == (batch, prompt_len + new), out.shape
    return batch * new * reps / dt


def seq_logprobs(m, ids: torch.Tensor) -> torch.Tensor:
    """Each sequence's summed log-prob of its next tokens (labels = input ids, shifted)."""
    logits = m(input_ids=ids).logits[:, :-1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1).sum(-1)


def bench_dpo(cfg, attn, pairs, mismatched, steps, warmup, seed, beta=0.1) -> tuple[float, float, float]:
    """tokens/s of DPO steps, of SFT steps on the same sequences (first half chosen) and of KTO
    steps (z0 from a no-grad forward over `mismatched`, then the KTO loss on the pairs)."""
    m = model(cfg, attn, seed)
    m.train()
    k = pairs.shape[0] // 2
    with torch.no_grad():
        ref = seq_logprobs(m, pairs)
        ref_mismatched = seq_logprobs(m, mismatched)
    out = []
    for kind in ("dpo", "sft", "kto"):
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.01)

        def step():
            if kind == "dpo":
                h = seq_logprobs(m, pairs) - ref
                loss = -torch.nn.functional.logsigmoid(beta * (h[:k] - h[k:])).mean()
            elif kind == "kto":
                with torch.no_grad():
                    z0 = (seq_logprobs(m, mismatched) - ref_mismatched).mean().clamp(min=0)
                h = seq_logprobs(m, pairs) - ref
                loss = torch.cat([1 - torch.sigmoid(beta * (h[:k] - z0)), 1 - torch.sigmoid(beta * (z0 - h[k:]))]).mean()
            else:
                loss = m(input_ids=pairs, labels=pairs).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        out.append(pairs.numel() * steps / timed(step, steps, warmup))
    return out[0], out[1], out[2]


def sgemm(m: int, k: int, n: int, min_s=0.5) -> float:
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):
        torch.mm(a, b)
    reps, t = 0, time.perf_counter()
    while time.perf_counter() - t < min_s:
        torch.mm(a, b)
        reps += 1
    return 2.0 * m * k * n * reps / (time.perf_counter() - t) / 1e9


def main() -> None:
    a = cli()
    torch.set_num_threads(a.threads)
    cfg = config(a.seq)
    g = torch.Generator().manual_seed(a.seed)
    ids = torch.randint(3, cfg.vocab_size, (a.batch, a.seq), generator=g)

    # Other processes on the box distort every figure: record the load we started under.
    r: dict = {"loadavg_1m_at_start": round(os.getloadavg()[0], 2)}
    if a.only == "dpo":
        pairs = torch.randint(3, cfg.vocab_size, (2 * a.batch, a.seq), generator=g)
        mismatched = torch.randint(3, cfg.vocab_size, (2 * a.batch, a.seq), generator=g)
        for attn in ("eager", "sdpa"):
            dpo, sft, kto = bench_dpo(cfg, attn, pairs, mismatched, a.steps, a.warmup, a.seed)
            r[f"dpo_tok_s_{attn}"], r[f"sft_same_tok_s_{attn}"] = round(dpo, 1), round(sft, 1)
            r[f"kto_tok_s_{attn}"] = round(kto, 1)
        r["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        r.update(torch=torch.__version__, threads=torch.get_num_threads(), seq=a.seq, pairs=a.batch, steps=a.steps)
        print(json.dumps(r))
        return
    for attn in ("eager", "sdpa"):
        r[f"train_tok_s_{attn}"] = round(bench_train(cfg, attn, ids, a.steps, a.warmup, a.seed), 1)
    r["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    for attn in ("eager", "sdpa"):
        r[f"forward_tok_s_{attn}"] = round(bench_forward(cfg, attn, ids, a.steps, a.warmup, a.seed), 1)
    gm = model(cfg, "sdpa", a.seed).eval()
    r["generate_tok_s_b1"] = round(bench_generate(gm, 1, a.seed), 1)
    r["generate_tok_s_b16"] = round(bench_generate(gm, 16, a.seed), 1)
    r["sgemm_gflops_1024x256x688"] = round(sgemm(1024, 256, 688), 1)
    r["sgemm_gflops_2048"] = round(sgemm(2048, 2048, 2048), 1)
    params = sum(p.numel() for p in gm.parameters())
    r["mfu_train_sdpa"] = round(6 * params * r["train_tok_s_sdpa"] / (r["sgemm_gflops_2048"] * 1e9), 3)
    r.update(
        params=params,
        torch=torch.__version__,
        transformers=transformers.__version__,
        threads=torch.get_num_threads(),
        seq=a.seq,
        batch=a.batch,
        steps=a.steps,
        warmup=a.warmup,
    )
    print(json.dumps(r))


if __name__ == "__main__":
    main()
