#!/usr/bin/env python3
"""Make the unpaired-KTO reference fixture under tests/fixtures/dpo/ (run by hand, never by
tests).

    python scripts/make_kto_fixture.py   (torch, transformers; shares make_dpo_fixture.py's
                                          tokenization, batching and log-probs)

Computes with PyTorch, on models/tiny-llama, the formula of TRL's KTOTrainer (loss_type "kto")
that elastica implements (src/train/kto.rs), step for step:
  - examples {"prompt","completion","label"}, template raw: prompt_ids = tok(prompt) (with
    <s>), completion_ids = tok(completion, no specials) + [eos]; the prompt is masked;
  - r = log pi(y|x) - log ref(y|x), summed over the completion's tokens, the reference being
    the starting model (log-probs computed once, one sequence at a time);
  - z0 = max(0, mean over the step's examples of log pi - log ref of their mismatched
    sequences: example i's prompt with example i-1's completion, cyclic), under no_grad before
    the step's first backward;
  - loss per example: w_D (1 - sigmoid(beta (r - z0))) if desirable, w_U (1 - sigmoid(beta
    (z0 - r))) if not, with w_D = 1, w_U = 1.5; the step's loss is the mean over its examples
    (each micro-batch backpropagates its examples' summed loss / examples in the step);
  - rewards beta r, averaged over the step's desirable and undesirable examples apart;
  - clip_grad_norm_(1.0), torch.optim.AdamW (non-fused, non-foreach) with weight decay 0.01 on
    tensors of ndim >= 2 and 0 on the rest, constant lr, no shuffle; 2 epochs of 6 examples at
    4 a step (2 a micro-batch): steps of 4, 2, 4 and 2 examples.

Writes kto_unpaired.jsonl and kto_unpaired.json (hyper-parameters, token ids, reference
log-probs, the per-step log). Checks: the first step's loss is the mean of the weights / 2
(policy = reference, z0 = 0), and z0 leaves its floor later.
"""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from make_dpo_fixture import HP, MODEL, OUT, check, collate, encode, seq_logps, trainee

# A shared desirable completion, so that raising it raises the mismatched sequences too and
# z0 leaves its floor of 0.
EXAMPLES = [
    {"prompt": "Review: The film was", "completion": " I am happy to help.", "label": True},
    {"prompt": "Question: What colour is the sky?\nAnswer:", "completion": " green", "label": False},
    {"prompt": "The cat sat on", "completion": " I am happy to help.", "label": True},
    {"prompt": "Say hello:", "completion": " no", "label": False},
    {"prompt": "Name a fruit:", "completion": " I am happy to help.", "label": True},
    {"prompt": "Two plus two is", "completion": " a very small red chair.", "label": False},
]
W_D, W_U = 1.0, 1.5
PER_STEP, MICRO = 4, 2


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    tok = AutoTokenizer.from_pretrained(str(MODEL))
    eos, pad = tok.eos_token_id, tok.pad_token_id
    n = len(EXAMPLES)
    seqs = [encode(tok, e["prompt"], e["completion"], eos) for e in EXAMPLES]
    mism = [encode(tok, EXAMPLES[i]["prompt"], EXAMPLES[(i - 1) % n]["completion"], eos) for i in range(n)]
    desirable = [e["label"] for e in EXAMPLES]
    ref = AutoModelForCausalLM.from_pretrained(str(MODEL), attn_implementation="eager", dtype=torch.float32).eval()
    with torch.no_grad():
        ref_y = [seq_logps(ref, *collate([s], pad)).item() for s in seqs]
        ref_m = [seq_logps(ref, *collate([s], pad)).item() for s in mism]

    model, opt = trainee()
    beta = HP["beta"]
    log, step = [], 0
    for _epoch in range(HP["epochs"]):
        for s0 in range(0, n, PER_STEP):
            step += 1
            idx = list(range(s0, min(s0 + PER_STEP, n)))
            k = len(idx)
            opt.zero_grad(set_to_none=True)
            with torch.no_grad():
                diffs = []
                for m in range(0, k, MICRO):
                    part = idx[m : m + MICRO]
                    lp = seq_logps(model, *collate([mism[i] for i in part], pad)).double()
                    diffs += (lp - torch.tensor([ref_m[i] for i in part], dtype=torch.float64)).tolist()
            z0 = max(0.0, sum(diffs) / len(diffs))
            losses, rewards, tokens = [], [], 0
            for m in range(0, k, MICRO):
                part = idx[m : m + MICRO]
                ids, mask, lab = collate([seqs[i] for i in part], pad)
                tokens += int((lab[:, 1:] != -100).sum())
                r = seq_logps(model, ids, mask, lab) - torch.tensor([ref_y[i] for i in part])
                d = torch.tensor([desirable[i] for i in part])
                l = torch.where(d, W_D * (1 - torch.sigmoid(beta * (r - z0))), W_U * (1 - torch.sigmoid(beta * (z0 - r))))
                (l.sum() / k).backward()
                losses += l.detach().double().tolist()
                rewards += [(desirable[i], beta * float(x)) for i, x in zip(part, r.detach().double())]
            gn = torch.nn.utils.clip_grad_norm_(model.parameters(), HP["clip"])
            opt.step()

            def mean_reward(want):
                rs = [x for d, x in rewards if d == want]
                return sum(rs) / len(rs) if rs else None

            entry = {
                "step": step, "loss": sum(losses) / k, "grad_norm": gn.item(), "tokens": tokens,
                "desirable_reward": mean_reward(True), "undesirable_reward": mean_reward(False),
                "kl": z0,
            }
            log.append(entry)
            print(f"  step {step}: {entry}")
    first = [W_D / 2 if d else W_U / 2 for d in desirable[:PER_STEP]]
    check(abs(log[0]["loss"] - sum(first) / len(first)) < 1e-5, f"first loss {log[0]['loss']}")
    check(max(e["kl"] for e in log) > 0.05, "z0 leaves its floor of 0")
    with open(OUT / "kto_unpaired.jsonl", "w", encoding="utf-8") as f:
        for e in EXAMPLES:
            f.write(json.dumps(e, ensure_ascii=False) + "\n")
    with open(OUT / "kto_unpaired.json", "w", encoding="utf-8") as f:
        json.dump(
            {
                "model": "tests/fixtures/models/tiny-llama",
                "data": "tests/fixtures/dpo/kto_unpaired.jsonl",
                "made_with": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
                "hyper_parameters": dict(HP, batch_size=MICRO, grad_accum=PER_STEP // MICRO,
                                         kto_desirable_weight=W_D, kto_undesirable_weight=W_U),
                "completions": [{"input_ids": i, "labels": l} for i, l in seqs],
                "mismatched": [{"input_ids": i, "labels": l} for i, l in mism],
                "reference_completions": ref_y,
                "reference_mismatched": ref_m,
                "log": log,
            },
            f,
            indent=1,
        )
        f.write("\n")
    print(f"wrote {OUT}/kto_unpaired.*")


if __name__ == "__main__":
    main()
