#!/usr/bin/env python3
"""Make the DPO reference fixture under tests/fixtures/dpo/ (run by hand, never by tests).

    /work/venv-torch/bin/python scripts/make_dpo_fixture.py

Computes with PyTorch, on models/tiny-llama, the DPO formula elastica implements
(src/train/dpo.rs), step for step:
  - pairs {"prompt","chosen","rejected"}, template raw: prompt_ids = tok(prompt) (with <s>),
    answer_ids = tok(answer, no specials) + [eos]; the prompt is masked, the EOS counts;
  - log pi(y) = sum of the answer tokens' log-probs (one padded forward per micro-batch,
    the batch's chosen answers first, then its rejected ones, right-padded with <pad>);
  - the reference = the starting model (log-probs computed once, before training);
  - h = (log pi(y+) - log ref(y+)) - (log pi(y-) - log ref(y-)); loss per pair
    sigmoid: -logsigmoid(beta h), ipo: (h - 1/(2 beta))^2; simpo (no reference; its own beta
    and gamma): -logsigmoid(beta (a+ - a-) - gamma) with a = log pi(y) / answer tokens, rewards
    beta a; kto: (1 - sigmoid(beta (r+ - z0)) + 1 - sigmoid(beta (z0 - r-))) / 2 with
    r = log pi - log ref and z0 = max(0, mean over the step's mismatched sequences (pair i's
    prompt with pair i-1's chosen and rejected answers, cyclic) of log pi - log ref), computed
    under no_grad before the step's first backward; the step's loss is the mean over
    its pairs (each micro-batch backpropagates its pairs' summed loss / pairs in the step);
  - rewards beta (log pi - log ref), margin = chosen - rejected, accuracy = chosen > rejected;
  - clip_grad_norm_(1.0), torch.optim.AdamW (non-fused, non-foreach) with weight decay 0.01
    on tensors of ndim >= 2 and 0 on the rest, constant lr, no shuffle.

Writes pairs.jsonl, kto_pairs.jsonl, trajectory.json (hyper-parameters, token ids, reference
log-probs, the per-step log of each loss; KTO's under "kto" with its own sequences) and step1.safetensors (the sigmoid run's weights after its first
AdamW step, HF names). Deterministic: one thread, float32, eager attention. Checks: the first
step's loss is ln 2 (policy = reference) and the fixture's files reload as written.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
MODEL = FIX / "models" / "tiny-llama"
OUT = FIX / "dpo"

PAIRS = [
    {"prompt": "Review: The film was", "chosen": " great, I loved it.", "rejected": " dull and far too long."},
    {"prompt": "Question: What colour is the sky?\nAnswer:", "chosen": " The sky is blue.", "rejected": " green"},
    {"prompt": "The cat sat on", "chosen": " the mat.", "rejected": " a very small red chair in the garden."},
    {"prompt": "Say hello:", "chosen": " hello", "rejected": " no"},
]

# KTO's own pairs: one shared chosen answer, so raising it on every prompt raises the
# mismatched sequences' log-probs too and the reference point z0 leaves its floor of 0 (on
# PAIRS the KL estimate stays negative, and z0 = 0 would leave its path untested).
KTO_PAIRS = [
    {"prompt": p["prompt"], "chosen": " I am happy to help.", "rejected": p["rejected"]} for p in PAIRS
]

HP = dict(
    template="raw",
    batch_size_pairs=2,
    grad_accum=2,
    epochs=2,
    shuffle=False,
    lr=1e-3,
    betas=[0.9, 0.95],
    eps=1e-8,
    weight_decay=0.01,
    schedule="constant",
    clip=1.0,
    beta=0.1,
    simpo_beta=2.0,
    simpo_gamma=0.5,
)


def check(ok: bool, what: str) -> None:
    if not ok:
        sys.exit(f"CHECK FAILED: {what}")
    print(f"  ok: {what}")


def encode(tok, prompt: str, answer: str, eos: int) -> tuple[list[int], list[int]]:
    p = tok(prompt, add_special_tokens=True)["input_ids"]
    a = tok(answer, add_special_tokens=False)["input_ids"] + [eos]
    return p + a, [-100] * len(p) + a


def collate(seqs, pad: int):
    L = max(len(i) for i, _ in seqs)
    ids = torch.full((len(seqs), L), pad, dtype=torch.int64)
    lab = torch.full((len(seqs), L), -100, dtype=torch.int64)
    mask = torch.zeros((len(seqs), L), dtype=torch.int64)
    for b, (i, l) in enumerate(seqs):
        ids[b, : len(i)] = torch.tensor(i)
        lab[b, : len(l)] = torch.tensor(l)
        mask[b, : len(i)] = 1
    return ids, mask, lab


def seq_logps(model, ids, mask, lab) -> torch.Tensor:
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    tgt = lab[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=-100, reduction="none")
    return -nll.view(tgt.shape).sum(dim=1)


def trainee():
    """The starting model in train mode and its AdamW (weight decay on tensors of ndim >= 2)."""
    model = AutoModelForCausalLM.from_pretrained(str(MODEL), attn_implementation="eager", dtype=torch.float32)
    model.train()
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": HP["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=HP["lr"],
        betas=tuple(HP["betas"]),
        eps=HP["eps"],
        foreach=False,
        fused=False,
    )
    return model, opt


def micro_batches(chosen, rejected, idx, size, pad):
    for m in range(0, len(idx), size):
        part = idx[m : m + size]
        yield part, collate([chosen[i] for i in part] + [rejected[i] for i in part], pad)


def run(loss_type: str, chosen, rejected, ref_c, ref_r, pad, save_step1: Path | None, kl=None):
    model, opt = trainee()
    beta = HP["beta"]
    per_step = HP["batch_size_pairs"] * HP["grad_accum"]
    log = []
    step = 0
    for _epoch in range(HP["epochs"]):
        for s0 in range(0, len(chosen), per_step):
            step += 1
            idx = list(range(s0, min(s0 + per_step, len(chosen))))
            n = len(idx)
            opt.zero_grad(set_to_none=True)
            losses, rc, rr, tokens = [], [], [], 0
            z0 = None
            if loss_type == "kto":
                kl_c, kl_r, ref_kl_c, ref_kl_r = kl
                with torch.no_grad():
                    diffs = []
                    for part, (ids, mask, lab) in micro_batches(kl_c, kl_r, idx, HP["batch_size_pairs"], pad):
                        lp = seq_logps(model, ids, mask, lab).double()
                        k = len(part)
                        diffs += (lp[:k] - torch.tensor([ref_kl_c[i] for i in part], dtype=torch.float64)).tolist()
                        diffs += (lp[k:] - torch.tensor([ref_kl_r[i] for i in part], dtype=torch.float64)).tolist()
                z0 = max(0.0, sum(diffs) / len(diffs))
            for part, (ids, mask, lab) in micro_batches(chosen, rejected, idx, HP["batch_size_pairs"], pad):
                tokens += int((lab[:, 1:] != -100).sum())
                lp = seq_logps(model, ids, mask, lab)
                k = len(part)
                if loss_type == "simpo":
                    beta = HP["simpo_beta"]
                    lens = (lab[:, 1:] != -100).sum(dim=1).float()
                    dc, dr = lp[:k] / lens[:k], lp[k:] / lens[k:]
                else:
                    dc = lp[:k] - torch.tensor([ref_c[i] for i in part], dtype=torch.float64).float()
                    dr = lp[k:] - torch.tensor([ref_r[i] for i in part], dtype=torch.float64).float()
                h = dc - dr
                if loss_type == "kto":
                    l = ((1 - torch.sigmoid(beta * (dc - z0))) + (1 - torch.sigmoid(beta * (z0 - dr)))) / 2
                elif loss_type == "sigmoid":
                    l = -F.logsigmoid(beta * h)
                elif loss_type == "simpo":
                    l = -F.logsigmoid(beta * h - HP["simpo_gamma"])
                else:
                    l = (h - 1 / (2 * beta)) ** 2
                (l.sum() / n).backward()
                losses += l.detach().double().tolist()
                rc += (beta * dc.detach().double()).tolist()
                rr += (beta * dr.detach().double()).tolist()
            gn = torch.nn.utils.clip_grad_norm_(model.parameters(), HP["clip"])
            opt.step()
            entry = {
                "step": step,
                "loss": sum(losses) / n,
                "chosen_reward": sum(rc) / n,
                "rejected_reward": sum(rr) / n,
                "margin": sum(c - r for c, r in zip(rc, rr)) / n,
                "accuracy": sum(1.0 for c, r in zip(rc, rr) if c > r) / n,
                "grad_norm": gn.item(),
                "tokens": tokens,
            }
            if z0 is not None:
                entry["kl"] = z0
            log.append(entry)
            print(f"  {loss_type} step {step}: {entry}")
            if step == 1 and save_step1 is not None:
                with tempfile.TemporaryDirectory() as tmp:
                    model.save_pretrained(tmp)
                    shutil.copy(Path(tmp) / "model.safetensors", save_step1)
                saved = load_file(str(save_step1))
                sd = model.state_dict()
                check(all(torch.equal(saved[k], sd[k]) for k in saved), "step1.safetensors equals the weights")
    return log


def kto_run(tok, ref, eos, pad) -> dict:
    """KTO on KTO_PAIRS (written to kto_pairs.jsonl): its log and the sequences it used."""
    with open(OUT / "kto_pairs.jsonl", "w", encoding="utf-8") as f:
        for r in KTO_PAIRS:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    n = len(KTO_PAIRS)
    seqs = {
        "chosen": [encode(tok, p["prompt"], p["chosen"], eos) for p in KTO_PAIRS],
        "rejected": [encode(tok, p["prompt"], p["rejected"], eos) for p in KTO_PAIRS],
        # Pair i's prompt with pair i-1's answers (cyclic).
        "mismatched_chosen": [encode(tok, KTO_PAIRS[i]["prompt"], KTO_PAIRS[(i - 1) % n]["chosen"], eos) for i in range(n)],
        "mismatched_rejected": [encode(tok, KTO_PAIRS[i]["prompt"], KTO_PAIRS[(i - 1) % n]["rejected"], eos) for i in range(n)],
    }
    with torch.no_grad():
        refs = {k: [seq_logps(ref, *collate([s], pad)).item() for s in v] for k, v in seqs.items()}
    kl = (seqs["mismatched_chosen"], seqs["mismatched_rejected"], refs["mismatched_chosen"], refs["mismatched_rejected"])
    log = run("kto", seqs["chosen"], seqs["rejected"], refs["chosen"], refs["rejected"], pad, None, kl)
    out = {"data": "tests/fixtures/dpo/kto_pairs.jsonl", "log": log}
    for k, v in seqs.items():
        out[k] = [{"input_ids": i, "labels": l} for i, l in v]
        out[f"reference_{k}"] = refs[k]
    return out


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "pairs.jsonl", "w", encoding="utf-8") as f:
        for r in PAIRS:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tok = AutoTokenizer.from_pretrained(str(MODEL))
    eos, pad = tok.eos_token_id, tok.pad_token_id
    chosen = [encode(tok, p["prompt"], p["chosen"], eos) for p in PAIRS]
    rejected = [encode(tok, p["prompt"], p["rejected"], eos) for p in PAIRS]

    ref = AutoModelForCausalLM.from_pretrained(str(MODEL), attn_implementation="eager", dtype=torch.float32)
    ref.eval()
    with torch.no_grad():
        # One sequence at a time: the reference does not depend on padding.
        ref_c = [seq_logps(ref, *collate([c], pad)).item() for c in chosen]
        ref_r = [seq_logps(ref, *collate([r], pad)).item() for r in rejected]

    sig = run("sigmoid", chosen, rejected, ref_c, ref_r, pad, OUT / "step1.safetensors")
    ipo = run("ipo", chosen, rejected, ref_c, ref_r, pad, None)
    simpo = run("simpo", chosen, rejected, ref_c, ref_r, pad, None)
    kto = kto_run(tok, ref, eos, pad)
    check(abs(sig[0]["loss"] - math.log(2)) < 1e-5, f"first sigmoid loss {sig[0]['loss']} = ln 2")
    check(abs(ipo[0]["loss"] - (1 / (2 * HP["beta"])) ** 2) < 1e-3, "first ipo loss = (1/(2 beta))^2")
    check(sig[1]["margin"] > 0, "the second step's reward margin is positive")
    check(abs(kto["log"][0]["loss"] - 0.5) < 1e-5, f"first kto loss {kto['log'][0]['loss']} = 1/2")
    check(kto["log"][1]["kl"] > 0.1, "KTO's second step has a reference point z0 above its floor")

    with open(OUT / "trajectory.json", "w", encoding="utf-8") as f:
        json.dump(
            {
                "model": "tests/fixtures/models/tiny-llama",
                "data": "tests/fixtures/dpo/pairs.jsonl",
                "made_with": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
                "hyper_parameters": HP,
                "chosen": [{"input_ids": i, "labels": l} for i, l in chosen],
                "rejected": [{"input_ids": i, "labels": l} for i, l in rejected],
                "reference_chosen": ref_c,
                "reference_rejected": ref_r,
                "sigmoid": sig,
                "ipo": ipo,
                "simpo": simpo,
                "kto": kto,
            },
            f,
            indent=1,
        )
        f.write("\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
