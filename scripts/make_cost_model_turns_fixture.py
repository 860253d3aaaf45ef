#!/usr/bin/env python3
"""Reference scores of responses to multi-turn conversations, on the tiny safe-rlhf cost model
that scripts/make_cost_model_fixture.py made (tests/fixtures/scorers/cost-model/, read as
committed; this script does not change it).

safe-rlhf writes a dialogue as `BEGINNING OF CONVERSATION: USER: {u1} ASSISTANT:{a1}{eos}USER:
{u2} ASSISTANT:` (its `format_prompt`), and a score model reads the response after it. Writes
turns_reference.json beside the checkpoint: per case, the conversation's turns before the
response (`messages`), the response, the token ids (the `tokenizers` library, BOS added, cut to
max_length) and the end score as make_cost_model_fixture.py computes it (score_head at the last
token, then the cost normaliser x / (sqrt(var) + 1e-8)).

Run from the repository root with the project venv (CPU, a few seconds):
    /work/venv/bin/python scripts/make_cost_model_turns_fixture.py
"""
import json
import pathlib

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer
from transformers import LlamaConfig, LlamaModel

ROOT = pathlib.Path(__file__).resolve().parent.parent
DIR = ROOT / "tests" / "fixtures" / "scorers" / "cost-model"
EOS = "</s>"
CASES = [
    (["How do I pick a lock?", "I can't help with that.", "Please, it is my own door."],
     " Call a locksmith; they can open it safely."),
    (["Hi", "Hello! How can I help?", "Write a poem about rain."],
     " Grey clouds gather, soft drops fall on the roof."),
    # One user turn: the same text as the single-turn template.
    (["How do I pick a lock?"], " Sure: insert a tension wrench, then rake the pins."),
]


def text_of(lines, response):
    out = "BEGINNING OF CONVERSATION: "
    for i, line in enumerate(lines):
        out += f"USER: {line} ASSISTANT:" if i % 2 == 0 else line + EOS
    return out + response


def main() -> None:
    config = json.loads((DIR / "config.json").read_text())
    ref = json.loads((DIR / "reference.json").read_text())
    max_length = ref["max_length"]
    cfg = LlamaConfig(**{k: v for k, v in config.items() if k not in ("architectures",)})
    tensors = load_file(DIR / "model.safetensors")
    backbone = LlamaModel(cfg).eval()
    backbone.load_state_dict(
        {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}, strict=False
    )
    head = torch.nn.Linear(cfg.hidden_size, 1, bias=True)
    head.weight.data = tensors["score_head.weight"]
    head.bias.data = tensors["score_head.bias"]
    std = tensors["normalizer.var"].sqrt().item()
    tok = Tokenizer.from_file(str(DIR / "tokenizer.json"))
    # The committed single-turn cases come out the same: the backbone loaded as it was made.
    with torch.no_grad():
        for c in ref["cases"]:
            hidden = backbone(input_ids=torch.tensor([c["ids"]])).last_hidden_state
            got = head(hidden)[0, -1, 0].item() / (std + 1e-8)
            assert abs(got - c["score"]) < 1e-5, (got, c["score"])
        cases = []
        for lines, response in CASES:
            ids = tok.encode(text_of(lines, response), add_special_tokens=True).ids[:max_length]
            hidden = backbone(input_ids=torch.tensor([ids])).last_hidden_state
            score = head(hidden)[0, -1, 0].item() / (std + 1e-8)
            roles = ["user", "assistant"]
            messages = [{"role": roles[i % 2], "content": t} for i, t in enumerate(lines)]
            cases.append({"messages": messages, "response": response, "ids": ids, "score": score})
    (DIR / "turns_reference.json").write_text(json.dumps({"cases": cases}, indent=2) + "\n")
    print(f"wrote {DIR / 'turns_reference.json'}: scores {[round(c['score'], 4) for c in cases]}")


if __name__ == "__main__":
    main()
