"""Conversation fixture for a SentencePiece-style tokenizer (tests/conversation.rs; tests never
run Python).

Llama-2, Mistral, TinyLlama and Zephyr tokenizers prefix the start of a text with '▁'
(Metaspace, prepend_scheme "first"). A chat answer tokenized on its own therefore starts with
a '▁' piece that the whole rendered conversation does not have where the answer follows the
generation prompt directly. TRL's SFT tokenizes the whole rendering once and masks as many
leading tokens as the prompt's own tokenization has; this fixture records what that gives.

Writes under tests/fixtures/chat/sp/:
- tokenizer.json: a byte-fallback BPE with a Metaspace pre-tokenizer (prepend_scheme
  "first"), specials <s>=0, </s>=1, <pad>=2, <unk>=3 as tiny-llama's config names them, and
  at most 300 pieces (tiny-llama's vocab_size): bytes, lower-case letters and a few fixed
  merges;
- tokenizer_config.json: LlamaTokenizerFast, with tiny-qwen2's Zephyr-style chat template;
- special_tokens_map.json;
- expected.json: for each row of chat/sft.jsonl, the ids and labels TRL builds (prompt =
  apply_chat_template(turns before the last, add_generation_prompt=True), full =
  apply_chat_template(all turns), the first len(prompt) tokens masked) and the summed NLL
  tiny-llama's weights give the counted tokens under this tokenizer.

The model the test and this script read is tiny-llama's config.json and model.safetensors
beside these tokenizer files (assembled in a temporary folder). The script checks that the
answer tokenized alone differs from its tokens in the joint rendering for at least one row,
so the fixture tells the two ways apart.

Run: python scripts/make_sp_chat_fixture.py   (torch, transformers, tokenizers)
"""
import json
import os
import shutil
import tempfile

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoModelForCausalLM, AutoTokenizer

torch.set_num_threads(1)
ROOT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")
OUT = os.path.join(ROOT, "chat", "sp")
BASE = os.path.join(ROOT, "models", "tiny-llama")
SPECIALS = ["<s>", "</s>", "<pad>", "<unk>"]
CORPUS = [
    "What is a cat? A small animal.",
    "hello there, how can I help? tell me a story.",
    "Once upon a time, a fox met a crow.",
    "Name a colour. Blue is a colour, and so is red.",
    "You answer briefly. The user asks, the assistant answers.",
] * 4


# Hand-picked merges (a trainer breaks ties between equal counts differently from run to run).
MERGES = [("\u2581", "a"), ("\u2581", "t"), ("\u2581t", "h"), ("\u2581th", "e"), ("e", "r"),
          ("o", "n"), ("i", "s"), ("\u2581", "c"), ("\u2581c", "a"), ("a", "n"), ("o", "r"),
          ("o", "u"), ("\u2581", "s"), ("\u2581", "h"), ("e", "l"), ("l", "o"), ("\u2581", "i"),
          ("r", "e")]


def sp_tokenizer():
    metaspace = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    vocab = {s: i for i, s in enumerate(SPECIALS)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    # Letters of the sentences only: the rest (capitals, punctuation, newlines, template
    # markup) falls back to bytes, as rare characters do in a real SentencePiece vocabulary.
    for c in sorted(set("".join(CORPUS).replace(" ", "\u2581"))):
        if c.islower() or c == "\u2581":
            vocab.setdefault(c, len(vocab))
    merges = list(MERGES)
    for a, b in merges:
        assert a in vocab and b in vocab, (a, b)
        vocab.setdefault(a + b, len(vocab))
    assert len(vocab) <= 300, len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True,
                               byte_fallback=True))
    tok.pre_tokenizer = metaspace
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 0)])
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    return tok


def sp_model(d):
    """tiny-llama's weights with the chat/sp tokenizer files, copied into the folder `d` (which
    transformers, and TRL's trainers, read): its tokenizer and model as transformers loads them."""
    for f in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(BASE, f), d)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(OUT, f), d)
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    return tok, model


def main():
    os.makedirs(OUT, exist_ok=True)
    template = json.load(open(os.path.join(ROOT, "models", "tiny-qwen2",
                                           "tokenizer_config.json")))["chat_template"]
    sp_tokenizer().save(os.path.join(OUT, "tokenizer.json"))
    json.dump({"tokenizer_class": "LlamaTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
               "pad_token": "<pad>", "unk_token": "<unk>", "add_bos_token": True,
               "add_eos_token": False, "legacy": False, "clean_up_tokenization_spaces": False,
               "chat_template": template},
              open(os.path.join(OUT, "tokenizer_config.json"), "w"), indent=1)
    json.dump({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
               "unk_token": "<unk>"},
              open(os.path.join(OUT, "special_tokens_map.json"), "w"), indent=1)

    with tempfile.TemporaryDirectory() as d:
        tok, model = sp_model(d)

    def ids_of(messages, gen):
        out = tok.apply_chat_template(messages, add_generation_prompt=gen, tokenize=True)
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    rows = [json.loads(l) for l in open(os.path.join(ROOT, "chat", "sft.jsonl"))]
    expected, differs = [], 0
    for row in rows:
        turns = row["messages"] if "messages" in row else row["prompt"] + row["completion"]
        prompt, full = ids_of(turns[:-1], True), ids_of(turns, False)
        labels = [-100] * len(prompt) + full[len(prompt):]
        answer_text = (tok.apply_chat_template(turns, tokenize=False)
                       [len(tok.apply_chat_template(turns[:-1], tokenize=False,
                                                    add_generation_prompt=True)):])
        alone = tok(answer_text, add_special_tokens=False)["input_ids"]
        differs += int(alone != full[len(prompt):])
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=torch.tensor([full])).logits[0, :-1], dim=-1)
        tgt = torch.tensor(labels[1:])
        keep = tgt != -100
        nll = -float(lp[torch.arange(len(tgt))[keep], tgt[keep]].sum())
        expected.append({"ids": full, "labels": labels, "nll_sum": nll,
                         "tokens": int(keep.sum()), "answer_alone": alone})
    assert differs > 0, "the answer alone tokenizes as in the joint rendering: no test"
    json.dump({"model": "tiny-llama weights + chat/sp tokenizer", "sft": expected,
               "transformers_version": __import__("transformers").__version__,
               "torch_version": torch.__version__},
              open(os.path.join(OUT, "expected.json"), "w"), indent=1)
    print(json.dumps([(e["nll_sum"], e["tokens"]) for e in expected]), f"differs in {differs}")


if __name__ == "__main__":
    main()
