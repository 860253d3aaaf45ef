"""How transformers 5 reads a Llama tokenizer (tests/llama_tokenizer.rs; tests never run Python).

transformers 5 does not read a `tokenizer.json` as written when `tokenizer_config.json` names
`LlamaTokenizer` (or `LlamaTokenizerFast`) and the file is not byte-level: `LlamaTokenizer`
keeps the file's vocabulary, merges, added tokens and post-processor but rebuilds the rest: no
normalizer, a Metaspace pre-tokenizer whose prepend scheme is "first" ("always" with
`legacy: true`, "never" with `add_prefix_space: false`), and a matching decoder. Llama-2's own
`tokenizer.json` (a Prepend + Replace normalizer, as SentencePiece's legacy behaviour) then
tokenizes differently on leading spaces and after special tokens. And any tokenizer config that
sets `add_bos_token` or `add_eos_token` gets a post-processor built from those two flags.

Writes tests/fixtures/tokenizers/llama_legacy.json: a Llama-2-style legacy tokenizer.json (the
chat/sp fixture's vocabulary and merges with Llama-2's normalizer and no pre-tokenizer), the
texts, and for each tokenizer_config variant the ids transformers' AutoTokenizer gives each
text (with special tokens) and its decoding of them. The script checks that the variants differ
from the file read as written, so the test can fail.

Run: python scripts/make_llama_tokenizer_fixture.py   (transformers, tokenizers)
"""
import json
import os
import shutil
import tempfile

import transformers
from tokenizers import Tokenizer
from transformers import AutoTokenizer

ROOT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")
OUT = os.path.join(ROOT, "tokenizers", "llama_legacy.json")
TEXTS = ["Hello world", "the cat", " leading space", "two  spaces", "<s>after special",
         "a</s>b", "\nnewline start", "hi <s> there", "</s> the end", " ", "x", ""]
BASE_CONFIG = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
               "unk_token": "<unk>", "pad_token": "<pad>"}
VARIANTS = [
    {},
    {"add_bos_token": True, "add_eos_token": False, "legacy": False},
    {"legacy": True},
    {"add_prefix_space": False},
    {"tokenizer_class": "LlamaTokenizerFast", "add_eos_token": True},
    {"add_bos_token": False},
    {"tokenizer_class": "PreTrainedTokenizerFast"},
    {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False, "add_eos_token": True},
]


def main():
    tj = json.load(open(os.path.join(ROOT, "chat", "sp", "tokenizer.json")))
    tj["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "\u2581"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
    tj["pre_tokenizer"] = None
    as_written = Tokenizer.from_str(json.dumps(tj))
    written_ids = [as_written.encode(t).ids for t in TEXTS]
    variants, differing = [], 0
    for v in VARIANTS:
        cfg = dict(BASE_CONFIG, **v)
        with tempfile.TemporaryDirectory() as d:
            shutil.copy(os.path.join(ROOT, "models", "tiny-llama", "config.json"), d)
            json.dump(tj, open(os.path.join(d, "tokenizer.json"), "w"))
            json.dump(cfg, open(os.path.join(d, "tokenizer_config.json"), "w"))
            tok = AutoTokenizer.from_pretrained(d)
            ids = [list(tok(t)["input_ids"]) for t in TEXTS]
            decoded = [tok.decode(i) for i in ids]
        differing += int(ids != written_ids)
        variants.append({"config": cfg, "class": type(tok).__name__, "ids": ids,
                         "decoded": decoded})
    assert differing >= 5, f"only {differing} variants differ from the file as written"
    json.dump({"tokenizer": tj, "texts": TEXTS, "variants": variants,
               "transformers_version": transformers.__version__},
              open(OUT, "w"), indent=1, ensure_ascii=False)
    print(f"{differing} of {len(VARIANTS)} variants differ from the file read as written")


if __name__ == "__main__":
    main()
