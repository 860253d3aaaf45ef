"""Conversation fixtures for tests/conversation.rs, computed with transformers (tests never run
Python).

Writes under tests/fixtures/chat/:
- sft.jsonl: TRL conversational SFT rows on models/tiny-qwen2 (which has a chat template):
  `{"messages": [...]}` (with a system turn, and multi-turn) and `{"prompt": [...],
  "completion": [...]}`.
- pairs.jsonl: TRL conversational preference rows: implicit prompt (`chosen` / `rejected`
  whole conversations sharing their first turns, with a string `prompt` beside them as in
  UltraFeedback binarized) and explicit prompt (`prompt` list, one-turn answers).
- prompts.jsonl: a conversation to answer (`{"messages"}`: a system and a user turn), for
  `elastica generate --template chat`.
- expected.json: for each SFT row, the token ids and loss labels as TRL's conversational
  prompt-completion builds them (prompt = apply_chat_template(turns before the last,
  add_generation_prompt=True); completion = apply_chat_template(all turns) after that
  prompt, all counted), and the summed NLL tiny-qwen2 gives the completion tokens; for each
  pair, the summed log-prob of the chosen and of the rejected answer tokens built the same way
  (the DPO reference log-probs of a run starting from tiny-qwen2); and the greedy answer
  (8 new tokens, special tokens skipped) transformers' `generate` gives the conversation of
  prompts.jsonl under the chat template.

Run: python scripts/make_chat_fixture.py   (torch, transformers)
"""
import json
import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

torch.set_num_threads(1)
ROOT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")
OUT = os.path.join(ROOT, "chat")
MODEL = os.path.join(ROOT, "models", "tiny-qwen2")

tok = AutoTokenizer.from_pretrained(MODEL)
model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32).eval()


def u(c):
    return {"role": "user", "content": c}


def a(c):
    return {"role": "assistant", "content": c}


SFT = [
    {"messages": [{"role": "system", "content": "You answer briefly."}, u("What is a cat?"),
                  a("A small animal.")]},
    {"messages": [u("hello there"), a("Hi! How can I help?"), u("tell me a story"),
                  a("Once upon a time, a fox met a crow.")]},
    {"prompt": [u("Name a colour.")], "completion": [a("Blue")]},
]
PAIRS = [
    {"prompt": "Is the sky blue?", "prompt_id": "p1",
     "chosen": [u("Is the sky blue?"), a("Yes, on a clear day.")],
     "rejected": [u("Is the sky blue?"), a("No.")], "score_chosen": 8.0, "score_rejected": 2.0},
    {"chosen": [u("hi"), a("hello"), u("how are you"), a("Fine, thanks for asking.")],
     "rejected": [u("hi"), a("hello"), u("how are you"), a("go away")]},
    {"prompt": [{"role": "system", "content": "Be kind."}, u("Help me")],
     "chosen": [a("Of course, what do you need?")], "rejected": [a("no")]},
]


def ids_of(messages, gen):
    out = tok.apply_chat_template(messages, add_generation_prompt=gen, tokenize=True)
    if isinstance(out, dict) or hasattr(out, "keys"):
        out = out["input_ids"]
    return list(out)


def built(turns):
    """(ids, labels) as TRL's conversational prompt-completion: the prompt masked."""
    prompt = ids_of(turns[:-1], True)
    full = ids_of(turns, False)
    assert full[: len(prompt)] == prompt, "template does not extend the prompt"
    return full, [-100] * len(prompt) + full[len(prompt):]


def summed_logp(ids, labels):
    x = torch.tensor([ids])
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=x).logits.float()[0, :-1], dim=-1)
    tgt = torch.tensor(labels[1:])
    keep = tgt != -100
    return float(lp[torch.arange(len(tgt))[keep], tgt[keep]].sum()), int(keep.sum())


def turns_of_sft(row):
    return row["messages"] if "messages" in row else row["prompt"] + row["completion"]


def split_pair(row):
    if isinstance(row.get("prompt"), list):
        return row["prompt"], row["chosen"], row["rejected"]
    n = 0
    while row["chosen"][n] == row["rejected"][n]:
        n += 1
    return row["chosen"][:n], row["chosen"][n:], row["rejected"][n:]


CONTEXT = [{"role": "system", "content": "You answer briefly."}, u("Tell me about foxes.")]
ctx_ids = torch.tensor([ids_of(CONTEXT, True)])
with torch.no_grad():
    gen = model.generate(ctx_ids, max_new_tokens=8, do_sample=False, eos_token_id=None,
                         pad_token_id=tok.pad_token_id)[0, ctx_ids.shape[1]:]
greedy = {"ids": gen.tolist(), "text": tok.decode(gen, skip_special_tokens=True)}

sft = []
for row in SFT:
    ids, labels = built(turns_of_sft(row))
    nll, n = summed_logp(ids, labels)
    sft.append({"ids": ids, "labels": labels, "nll_sum": -nll, "tokens": n})
pairs = []
for row in PAIRS:
    ctx, c, r = split_pair(row)
    lc = summed_logp(*built(ctx + c))[0]
    lr = summed_logp(*built(ctx + r))[0]
    pairs.append({"chosen_logp": lc, "rejected_logp": lr})

os.makedirs(OUT, exist_ok=True)
with open(os.path.join(OUT, "sft.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in SFT)
with open(os.path.join(OUT, "prompts.jsonl"), "w") as f:
    f.write(json.dumps({"messages": CONTEXT}) + "\n")
with open(os.path.join(OUT, "pairs.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in PAIRS)
json.dump(
    {"model": "tiny-qwen2", "sft": sft, "pairs": pairs, "greedy": greedy,
     "rendered_first": tok.apply_chat_template(turns_of_sft(SFT[0]), tokenize=False),
     "transformers_version": __import__("transformers").__version__,
     "torch_version": torch.__version__},
    open(os.path.join(OUT, "expected.json"), "w"),
    indent=1,
)
print(json.dumps({"sft": [(s["nll_sum"], s["tokens"]) for s in sft], "pairs": pairs}))
