"""Prompt-response pair fixture for a SentencePiece-style tokenizer (tests/pairs.rs; tests never
run Python).

TRL 1.x tokenizes a plain prompt-completion example the same way for SFT, DPO and KTO: the
prompt alone and the prompt followed by the completion (with the EOS text appended), each once;
the completion starts where the two tokenizations first differ (`common_prefix_length`). DPO
starts both answers of a pair at the earlier of their two boundaries; KTO's KL sequences are
example i's prompt ids followed by example i-1's completion ids. safe-rlhf tokenizes its SFT
and preference text the same joint way. With a Metaspace tokenizer (Llama-2, Mistral,
TinyLlama) an answer tokenized on its own would get a leading '▁'; with a BPE that merges
across the boundary its first token would differ.

Reads the chat/sp tokenizer (written by make_sp_chat_fixture.py) with tiny-llama's weights, and
writes under tests/fixtures/chat/sp/:
- pair_sft.jsonl, pair_prefs.jsonl, pair_feedback.jsonl: plain pairs, preference pairs and
  unpaired feedback, chosen so that some answers alone tokenize differently from their joint
  tokens and one answer merges with the end of its prompt;
- pairs_expected.json: for the raw and safe-rlhf templates, the ids and labels TRL builds for
  each SFT row (and the summed NLL of the counted tokens under tiny-llama's weights), for each
  preference pair's two answers, and for each feedback row's completion and KL sequence.

The safe-rlhf template is safe-rlhf's `PROMPT_BEGIN + PROMPT_USER.format(input=p) +
PROMPT_ASSISTANT`. The script checks that the fixture tells the joint way from the separate one
(an answer alone differs) and that a boundary merge occurs (a common prefix shorter than the
prompt), so the tests can fail.

Where TRL is installed (checked with trl 1.16.0), the script also builds TRL's own SFT, DPO and
KTO data sets (and the KTO collator's KL batch, the whole file in one batch) from the same rows
and asserts they equal the raw-template expectations.

Run: python scripts/make_sp_pair_fixture.py   (torch, transformers, tokenizers; optionally trl)
"""
import json
import os
import shutil
import tempfile

import torch
from make_sp_chat_fixture import sp_model

torch.set_num_threads(1)
ROOT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")
SP = os.path.join(ROOT, "chat", "sp")

SFT = [
    {"prompt": "What is a cat?\nAnswer:", "response": " a small animal."},
    {"prompt": "Say hello\n", "response": "hello there, how can I help?"},
    {"prompt": "Tell me a story: ", "response": "a fox met a crow."},
    {"prompt": "Name a colour.", "response": "Blue is a colour."},
]
PREFS = [
    {"prompt": "Tell me a story: ", "chosen": "a fox met a crow.", "rejected": "No."},
    {"prompt": "Say hello\n", "chosen": "hello there", "rejected": " go away"},
    {"prompt": "What is a cat?", "chosen": " A small animal.", "rejected": "a car"},
]
FEEDBACK = [
    {"prompt": "Tell me a story: ", "completion": "a fox met a crow.", "label": True},
    {"prompt": "Say hello\n", "completion": "go away", "label": False},
    {"prompt": "What is a cat?", "completion": " A small animal.", "label": True},
]
TEMPLATES = {
    "raw": lambda p: p,
    "safe-rlhf": lambda p: f"BEGINNING OF CONVERSATION: USER: {p} ASSISTANT:",
}


def common_prefix_length(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def main():
    for name, rows in (("pair_sft", SFT), ("pair_prefs", PREFS), ("pair_feedback", FEEDBACK)):
        with open(os.path.join(SP, f"{name}.jsonl"), "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    # Kept until the end: TRL's trainers look at the model's folder again.
    d = tempfile.mkdtemp()
    tok, model = sp_model(d)
    eos = tok.eos_token

    def ids(text):
        return list(tok(text)["input_ids"])  # TRL's `_tokenize`: specials added (BOS)

    def joint(prompt, answer):
        """TRL's (prompt ids, prompt+completion ids, common prefix) with the EOS text added."""
        p, full = ids(prompt), ids(prompt + answer + eos)
        return p, full, common_prefix_length(p, full)

    alone_differs, merges = 0, 0

    def note(prompt_text, answer, p, full, start):
        nonlocal alone_differs, merges
        alone = list(tok(answer + eos, add_special_tokens=False)["input_ids"])
        alone_differs += int(alone != full[len(p):])
        merges += int(start < len(p))

    def labels(full, start):
        return [-100] * start + full[start:]

    def nll(full, lab):
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=torch.tensor([full])).logits[0, :-1], dim=-1)
        tgt = torch.tensor(lab[1:])
        keep = tgt != -100
        return -float(lp[torch.arange(len(tgt))[keep], tgt[keep]].sum()), int(keep.sum())

    out = {}
    for tname, render in TEMPLATES.items():
        sft = []
        for r in SFT:
            text = render(r["prompt"])
            p, full, start = joint(text, r["response"])
            note(text, r["response"], p, full, start)
            lab = labels(full, start)
            s, n = nll(full, lab)
            sft.append({"ids": full, "labels": lab, "nll_sum": s, "tokens": n})
        prefs = []
        for r in PREFS:
            text = render(r["prompt"])
            p, fc, sc = joint(text, r["chosen"])
            _, fr, sr = joint(text, r["rejected"])
            note(text, r["chosen"], p, fc, sc)
            note(text, r["rejected"], p, fr, sr)
            start = min(sc, sr)  # TRL's DPO: both answers start after the shared prompt
            prefs.append({"chosen": {"ids": fc, "labels": labels(fc, start)},
                          "rejected": {"ids": fr, "labels": labels(fr, start)}})
        feedback, parts = [], []
        for r in FEEDBACK:
            text = render(r["prompt"])
            p, full, start = joint(text, r["completion"])
            note(text, r["completion"], p, full, start)
            parts.append((full[:start], full[start:]))
            feedback.append({"ids": full, "labels": labels(full, start)})
        for i, e in enumerate(feedback):
            prompt_ids, completion_ids = parts[i][0], parts[i - 1][1]  # example i-1's, cyclic
            kl = prompt_ids + completion_ids
            e["kl"] = {"ids": kl, "labels": labels(kl, len(prompt_ids))}
        out[tname] = {"sft": sft, "prefs": prefs, "feedback": feedback}
    assert alone_differs > 0, "every answer alone tokenizes as in the joint text: no test"
    assert merges > 0, "no token merges across a prompt's end: the common prefix is untested"
    out.update({"model": "tiny-llama weights + chat/sp tokenizer",
                "transformers_version": __import__("transformers").__version__,
                "torch_version": torch.__version__,
                "answers_alone_differing": alone_differs, "boundary_merges": merges})
    with open(os.path.join(SP, "pairs_expected.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(f"{alone_differs} answers differ alone, {merges} boundary merges")
    try:
        import trl  # noqa: F401
    except ImportError:
        print("trl is not installed: the expectations were not checked against TRL itself")
    else:
        check_against_trl(model, tok, out["raw"])
    shutil.rmtree(d)


def check_against_trl(model, tok, want):
    """TRL's own data sets for the raw rows equal the expectations."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, SFTConfig, SFTTrainer

    out = tempfile.mkdtemp()
    args = dict(output_dir=out, report_to=[], max_steps=1, use_cpu=True, max_length=None)
    sft = SFTTrainer(model=model, processing_class=tok,
                     args=SFTConfig(per_device_train_batch_size=1, **args),
                     train_dataset=Dataset.from_list(
                         [{"prompt": r["prompt"], "completion": r["response"]} for r in SFT]))
    for i, e in enumerate(want["sft"]):
        row = sft.train_dataset[i]
        assert (row["input_ids"], row["labels"]) == (e["ids"], e["labels"]), ("sft", i)
    dpo = DPOTrainer(model=model, processing_class=tok,
                     args=DPOConfig(per_device_train_batch_size=1, **args),
                     train_dataset=Dataset.from_list(PREFS))
    for i, e in enumerate(want["prefs"]):
        row = dpo.train_dataset[i]
        for side in ("chosen", "rejected"):
            ids = row["prompt_ids"] + row[f"{side}_ids"]
            labels = [-100] * len(row["prompt_ids"]) + row[f"{side}_ids"]
            assert (ids, labels) == (e[side]["ids"], e[side]["labels"]), ("dpo", i, side)
    kto = KTOTrainer(model=model, processing_class=tok,
                     args=KTOConfig(per_device_train_batch_size=len(FEEDBACK), **args),
                     train_dataset=Dataset.from_list(FEEDBACK))
    batch = kto.data_collator([kto.train_dataset[i] for i in range(len(FEEDBACK))])
    for i, e in enumerate(want["feedback"]):
        row = kto.train_dataset[i]
        assert row["prompt_ids"] + row["completion_ids"] == e["ids"], ("kto", i)
        n = int(batch["KL_attention_mask"][i].sum())
        assert batch["KL_input_ids"][i][:n].tolist() == e["kl"]["ids"], ("kto KL", i)
    print(f"TRL {__import__('trl').__version__} builds the same SFT, DPO and KTO sequences")


if __name__ == "__main__":
    main()
