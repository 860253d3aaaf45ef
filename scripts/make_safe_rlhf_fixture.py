"""Conversations in safe-rlhf's multi-turn format, for tests/safe_rlhf_turns.rs, computed
with transformers' tokenizer and model (tests never run Python).

safe-rlhf (PKU-Alignment) writes a dialogue as
    BEGINNING OF CONVERSATION: USER: {u1} ASSISTANT:{a1}{eos}USER: {u2} ASSISTANT:
(its `format_prompt`: `PROMPT_BEGIN`, then `PROMPT_USER.format(input=u) + PROMPT_ASSISTANT`
for each user turn and `a + eos_token` for each assistant turn), tokenized with the
tokenizer's special tokens (the BOS). Its SFT data set trains on a dialogue's assistant turns:
it tokenizes the text after each appended turn and masks the tokens each user part adds.

Writes under tests/fixtures/chat/:
- safe_rlhf.jsonl: `{"messages"}` conversations of user and assistant turns;
- safe_rlhf_prompts.jsonl: the same conversations without their last answer;
- safe_rlhf.json, for each conversation, on models/tiny-llama (eos "</s>", BOS added):
  - "assistant": ids and labels as safe-rlhf's SFT data set builds a dialogue (above);
  - "last": TRL's prompt-completion split: the turns before the last answer tokenized with
    the BOS, then the last answer and the EOS text tokenized apart, only they counted;
  - "all": the whole text tokenized once, every token counted;
  - "prompt_ids": the turns before the last answer as a generation prompt, and "greedy":
    transformers' greedy continuation of them (8 new tokens, special tokens skipped).

Run: python scripts/make_safe_rlhf_fixture.py   (torch, transformers)
"""
import json
import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

torch.set_num_threads(1)
ROOT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")
OUT = os.path.join(ROOT, "chat")
MODEL = os.path.join(ROOT, "models", "tiny-llama")

tok = AutoTokenizer.from_pretrained(MODEL)
model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32).eval()
EOS = tok.eos_token

BEGIN = "BEGINNING OF CONVERSATION: "


def user_part(u):
    return "USER: " + u + " " + "ASSISTANT:"


def text_of(lines):
    """The safe-rlhf text of alternating user / assistant lines (a user line first)."""
    out = BEGIN
    for i, line in enumerate(lines):
        out += user_part(line) if i % 2 == 0 else line + EOS
    return out


def ids(text, special):
    return tok(text, add_special_tokens=special)["input_ids"]


CONVERSATIONS = [
    ["What is a cat?", "A small animal."],
    ["hello there", "Hi! How can I help?", "tell me a story", "Once upon a time, a fox met a crow."],
    ["Wie geht's?", "Gut, danke.", "Und dir?", "Tschüss!"],
]

rows = []
for lines in CONVERSATIONS:
    # safe-rlhf's dialogue SFT: the offsets after each appended line; user parts masked.
    text, offsets = BEGIN, [0]
    for i, line in enumerate(lines):
        text += user_part(line) if i % 2 == 0 else line + EOS
        offsets.append(len(ids(text, True)))
    full = ids(text, True)
    assert text == text_of(lines)
    labels = list(full)
    for begin, end in zip(offsets[::2], offsets[1::2]):
        labels[begin:end] = [-100] * (end - begin)
    prompt = ids(text_of(lines[:-1]), True)
    answer = ids(lines[-1] + EOS, False)
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False)
    greedy = tok.decode(out[0][len(prompt):], skip_special_tokens=True)
    rows.append({
        "assistant": {"ids": full, "labels": labels},
        "last": {"ids": prompt + answer, "labels": [-100] * len(prompt) + answer},
        "all": {"ids": full, "labels": full},
        "prompt_ids": prompt,
        "greedy": greedy,
    })


def messages(lines):
    roles = ["user", "assistant"]
    return [{"role": roles[i % 2], "content": line} for i, line in enumerate(lines)]


with open(os.path.join(OUT, "safe_rlhf.jsonl"), "w") as f:
    for lines in CONVERSATIONS:
        f.write(json.dumps({"messages": messages(lines)}, ensure_ascii=False) + "\n")
with open(os.path.join(OUT, "safe_rlhf_prompts.jsonl"), "w") as f:
    for lines in CONVERSATIONS:
        f.write(json.dumps({"messages": messages(lines[:-1])}, ensure_ascii=False) + "\n")
with open(os.path.join(OUT, "safe_rlhf.json"), "w") as f:
    json.dump({"eos": EOS, "rows": rows}, f, indent=1, ensure_ascii=False)
    f.write("\n")
print("wrote", len(rows), "conversations")
