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
- expected.json's "turns": for each SFT row, the ids, labels and summed NLL with the loss on
  every assistant turn (`--turns assistant`, TRL's assistant_only_loss): transformers'
  `apply_chat_template(return_assistant_tokens_mask=True)` with MARKED, tiny-qwen2's template
  written out with `{% generation %}` around each assistant turn's text (the script checks
  that it renders every conversation as the original does); and on every token
  (`--turns all`, TRL's default for {"messages"}): `apply_chat_template(tokenize=True)`.
  "marked_template" is MARKED itself, for the test of templates that carry the markers, and
  "marked_tight_template" a copy whose marks end before the newline after each turn (the
  same rendering, one token less counted a turn), with its rows as "assistant_tight".

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

# tiny-qwen2's template with transformers' generation markers around each assistant turn's
# text (content, end-of-turn and the newline the template writes after it).
MARKED = (
    "{{ bos_token }}\n{% for message in messages %}{% if message['role'] == 'assistant' %}"
    "<|assistant|>\n{% generation %}{{ message['content'] | trim }}{{ eos_token }}\n"
    "{% endgeneration %}{% elif message['role'] in ['system', 'user'] %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] | trim }}{{ eos_token }}\n"
    "{% else %}{{ raise_exception('Unknown role: ' + message['role']) }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# The same, its marks ending before the newline: transformers then counts one token less a turn.
MARKED_TIGHT = MARKED.replace("{{ eos_token }}\n{% endgeneration %}",
                              "{{ eos_token }}{% endgeneration %}{{ '\\n' }}")
assert MARKED_TIGHT != MARKED


def assistant_mask(turns, template):
    """(ids, labels) with transformers' assistant mask over `template`."""
    for n in range(1, len(turns) + 1):
        for gen in (False, True):
            same = tok.apply_chat_template(turns[:n], tokenize=False, add_generation_prompt=gen)
            assert same == tok.apply_chat_template(
                turns[:n], tokenize=False, add_generation_prompt=gen, chat_template=template
            ), "the marked template renders otherwise"
    out = tok.apply_chat_template(turns, chat_template=template, tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True)
    ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    assert ids == ids_of(turns, False)
    return ids, [t if m else -100 for t, m in zip(ids, mask)]


def turns_built(turns):
    """{mode: (ids, labels)} for the loss on every assistant turn (as MARKED and as
    MARKED_TIGHT mark it) and on every token."""
    ids = ids_of(turns, False)
    return {
        "assistant": assistant_mask(turns, MARKED),
        "assistant_tight": assistant_mask(turns, MARKED_TIGHT),
        "all": (ids, list(ids)),
    }


turns_expected = []
for row in SFT:
    modes = {}
    for mode, (ids, labels) in turns_built(turns_of_sft(row)).items():
        nll, n = summed_logp(ids, labels)
        modes[mode] = {"ids": ids, "labels": labels, "nll_sum": -nll, "tokens": n}
    turns_expected.append(modes)

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
     "turns": turns_expected, "marked_template": MARKED,
     "marked_tight_template": MARKED_TIGHT,
     "rendered_first": tok.apply_chat_template(turns_of_sft(SFT[0]), tokenize=False),
     "transformers_version": __import__("transformers").__version__,
     "torch_version": torch.__version__},
    open(os.path.join(OUT, "expected.json"), "w"),
    indent=1,
)
print(json.dumps({"sft": [(s["nll_sum"], s["tokens"]) for s in sft], "pairs": pairs}))
