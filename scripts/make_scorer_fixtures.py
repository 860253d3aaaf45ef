#!/usr/bin/env python3
"""Make tiny random Hugging Face sequence classifiers and their reference outputs, for the
classifier scorer's tests (tests/fixtures/scorers/).

Run from the repository root with the project venv (CPU is enough, a few seconds):
    /work/venv/bin/python scripts/make_scorer_fixtures.py

For each of BertForSequenceClassification, DistilBertForSequenceClassification and
RobertaForSequenceClassification it writes a checkpoint directory in the layout
`save_pretrained` produces (config.json, model.safetensors, tokenizer.json,
tokenizer_config.json): 2 layers, hidden size 32, 4 heads, id2label {0: NEGATIVE,
1: POSITIVE}, a WordPiece (BERT, DistilBERT; vocabulary built from a small corpus) or
byte-level BPE (RoBERTa; trained on it) tokenizer. Weights are random with a larger spread than the
default init, and the seeds are fixed (picked so the probabilities differ clearly between
texts); the script asserts that spread. Everything it writes is deterministic.

reference.json beside them holds, per model, the token ids and P(label) that transformers
computes for the same texts, batched with right padding and an attention mask, at the model's
full length and truncated to 16 tokens. Token ids come from the `tokenizers` library reading
the checkpoint's tokenizer.json (the file the Rust scorer reads); the script checks that
AutoTokenizer gives the same ids, so the reference is what a user's transformers pipeline
computes.
"""
import json
import pathlib
import shutil

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaForSequenceClassification,
)

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "scorers"
ID2LABEL = {0: "NEGATIVE", 1: "POSITIVE"}
LABEL2ID = {v: k for k, v in ID2LABEL.items()}

CORPUS = [
    "This movie was wonderful, the acting superb and the story moving.",
    "A terrible film. The plot made no sense and the dialogue was awful.",
    "I loved every minute of it and would happily watch it again.",
    "Boring, slow and far too long; I nearly fell asleep twice.",
    "The director has made a clever, funny and warm comedy.",
    "Nothing works here: bad jokes, bad music, bad everything.",
    "How do I pick a lock? I cannot help with that request.",
    "Sure, here is a recipe for bread: flour, water, yeast and salt.",
] * 4

# Texts to score: short and long (the long one exceeds every model's length, so truncation
# is exercised), punctuation, non-ASCII, words outside the training corpus, and an empty one.
TEXTS = [
    "This movie was wonderful!",
    "A terrible film, awful dialogue.",
    "",
    "Café crème — naïve déjà vu, 10/10 would watch again.",
    "zygomorphic quixotic xylophones",
    " ".join(["The story is slow but the acting is superb and the ending is moving."] * 8),
    "I cannot help with that request.",
]
SHORT_MAX = 16


def wordpiece_tokenizer():
    # The vocabulary is built, not trained (WordPiece training breaks ties differently from run
    # to run): the corpus's words, its characters as word starts and as "##" continuations,
    # and a few suffixes so words split into several pieces.
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    words = sorted({w for text in CORPUS for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text))})
    chars = sorted({c for w in words for c in w})
    suffixes = ["##ing", "##ed", "##ly", "##s", "##er"]
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    # Words ending in a suffix enter only as their stem, so the suffix pieces get used.
    stems = [w for w in words if not any(w.endswith(x[2:]) and len(w) > len(x) for x in suffixes)]
    tokens = specials + chars + ["##" + c for c in chars] + suffixes + [w for w in stems if len(w) > 1]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tok.decoder = decoders.WordPiece()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]"
    )
    return tok, fast


def bpe_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trainer = trainers.BpeTrainer(
        vocab_size=360, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True, add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        cls_token="<s>", sep_token="</s>", mask_token="<mask>",
    )
    return tok, fast


def spread_weights(model, seed):
    """Random weights with enough spread that class probabilities vary between texts."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "LayerNorm" in name or "layer_norm" in name:
                p.copy_(1.0 + 0.2 * noise if name.endswith("weight") else 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.2 * noise)
            else:
                p.copy_(0.25 * noise)


def reference(model, tok, max_length, pad_id, with_types):
    tok = Tokenizer.from_str(tok.to_str())
    tok.no_padding()
    tok.enable_truncation(max_length)
    tok.enable_padding(pad_id=pad_id, pad_token=tok.id_to_token(pad_id))
    enc = tok.encode_batch(TEXTS)
    ids = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    kwargs = {"input_ids": ids, "attention_mask": mask}
    if with_types:
        kwargs["token_type_ids"] = torch.tensor([e.type_ids for e in enc])
    with torch.no_grad():
        probs = torch.softmax(model(**kwargs).logits.double(), dim=-1)
    # Unpadded ids, as the tokenizer gives them for each text alone.
    unpadded = [[i for i, m in zip(e.ids, e.attention_mask) if m] for e in enc]
    return ids, mask, probs, unpadded


def make(name, model, tok, fast, model_max, with_types, seed):
    d = OUT / name
    if d.exists():
        shutil.rmtree(d)
    spread_weights(model, seed)
    model.eval()
    model.save_pretrained(d, safe_serialization=True)
    fast.model_max_length = model_max
    fast.save_pretrained(d)
    for extra in ["special_tokens_map.json", "chat_template.jinja"]:
        (d / extra).unlink(missing_ok=True)

    pad_id = model.config.pad_token_id
    out = {"texts": TEXTS, "model_max_length": model_max}
    for key, max_len in (("full", model_max), ("short", SHORT_MAX)):
        ids, mask, probs, unpadded = reference(model, tok, max_len, pad_id, with_types)
        # The checkpoint as a user loads it: AutoTokenizer + the saved model.
        auto = AutoTokenizer.from_pretrained(d)
        batch = auto(TEXTS, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        assert torch.equal(batch["input_ids"], ids), f"{name}: AutoTokenizer ids differ from tokenizer.json's"
        assert torch.equal(batch["attention_mask"], mask)
        out[key] = {
            "max_length": max_len,
            "input_ids": unpadded,
            "p_positive": [float(p[LABEL2ID["POSITIVE"]]) for p in probs],
            "p_negative": [float(p[LABEL2ID["NEGATIVE"]]) for p in probs],
        }
    assert max(len(i) for i in out["full"]["input_ids"]) == model_max, "the long text must be truncated"
    spread = out["full"]["p_positive"]
    assert max(spread) - min(spread) > 0.1, f"{name}: probabilities barely vary: {spread}"
    (d / "reference.json").write_text(json.dumps(out, indent=1, ensure_ascii=False))
    print(name, [round(p, 3) for p in spread], "keys:", sum(1 for _ in model.state_dict()))


def main():
    torch.manual_seed(0)
    OUT.mkdir(parents=True, exist_ok=True)
    wp, wp_fast = wordpiece_tokenizer()
    common = dict(id2label=ID2LABEL, label2id=LABEL2ID)

    bert = BertForSequenceClassification(BertConfig(
        vocab_size=wp.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, type_vocab_size=2, pad_token_id=0, **common))
    make("bert", bert, wp, wp_fast, 64, True, seed=11)

    distil = DistilBertForSequenceClassification(DistilBertConfig(
        vocab_size=wp.get_vocab_size(), dim=32, n_layers=2, n_heads=4, hidden_dim=64,
        max_position_embeddings=64, pad_token_id=0, **common))
    make("distilbert", distil, wp, wp_fast, 64, False, seed=2)

    bpe, bpe_fast = bpe_tokenizer()
    # RoBERTa positions start at padding_idx + 1 = 2, so 66 position rows allow 64 tokens.
    roberta = RobertaForSequenceClassification(RobertaConfig(
        vocab_size=bpe.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=66, type_vocab_size=1, pad_token_id=1,
        bos_token_id=0, eos_token_id=2, **common))
    make("roberta", roberta, bpe, bpe_fast, 64, True, seed=6)

    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            print(f"{p.relative_to(OUT)}  {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()
