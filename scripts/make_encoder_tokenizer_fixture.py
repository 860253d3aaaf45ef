"""How transformers 5 reads a BERT / DistilBERT / RoBERTa classifier's tokenizer
(tests/encoder_tokenizer.rs; tests never run Python).

transformers 5 reads `tokenizer.json` as written only under `PreTrainedTokenizerFast` (its
`TokenizersBackend`). Where `tokenizer_config.json` names `BertTokenizer`,
`DistilBertTokenizer` or `RobertaTokenizer` (with or without `Fast`), or names no class and
`config.json`'s `model_type` is bert, distilbert or roberta, the class's constructor keeps the
file's vocabulary (and merges) and builds the rest from the tokenizer config's flags and its
own defaults: BERT's normalizer from `do_lower_case` (default true), `strip_accents` and
`tokenize_chinese_chars`, its [CLS]/[SEP] template from `cls_token`/`sep_token`; RoBERTa's
byte-level pre-tokenizer and post-processor from `add_prefix_space` (default false) and
`trim_offsets`. A file and a config that disagree (a cased file with no `do_lower_case`, a
RoBERTa file that adds a prefix space the config does not ask for) then tokenize otherwise.

Writes tests/fixtures/tokenizers/encoders.json: for each variant of the scorer fixtures
(tests/fixtures/scorers/{bert,distilbert,roberta}): the edits to tokenizer.json (JSON pointer,
value), the tokenizer_config.json written (null: none), config.json's model_type, and the ids
transformers' AutoTokenizer gives each text (special tokens added). The script checks that
some variants differ from the file read as written, so the test can fail.

Run: python scripts/make_encoder_tokenizer_fixture.py   (transformers, tokenizers)
"""
import json
import os
import shutil
import tempfile

import transformers
from tokenizers import Tokenizer
from transformers import AutoTokenizer

ROOT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")
OUT = os.path.join(ROOT, "tokenizers", "encoders.json")
TEXTS = ["Hello World!", "  leading spaces and   runs", "\u00dcn\u00efc\u00f6d\u00e9 caf\u00e9 na\u00efve",
         "don't stop", "a\tb\nc", "CamelCase WORDS", "\u4e2d\u6587 test", "e.g. 3.14 $100", " x", ""]
BERT = {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]",
        "mask_token": "[MASK]", "model_max_length": 64}
ROBERTA = {"bos_token": "<s>", "eos_token": "</s>", "cls_token": "<s>", "sep_token": "</s>",
           "pad_token": "<pad>", "unk_token": "<unk>", "mask_token": "<mask>",
           "model_max_length": 64}
CASED = [["/normalizer/lowercase", False]]
# (name, fixture, edits to tokenizer.json, tokenizer_config.json or None)
VARIANTS = [
    ("bert as written", "bert", [], dict(BERT, tokenizer_class="PreTrainedTokenizerFast")),
    ("bert class", "bert", [], dict(BERT, tokenizer_class="BertTokenizer")),
    ("cased file, no do_lower_case", "bert", CASED, dict(BERT, tokenizer_class="BertTokenizer")),
    ("cased file, do_lower_case false", "bert", CASED,
     dict(BERT, tokenizer_class="BertTokenizerFast", do_lower_case=False)),
    ("uncased file, do_lower_case false", "bert", [],
     dict(BERT, tokenizer_class="BertTokenizer", do_lower_case=False)),
    ("strip_accents false", "bert", [],
     dict(BERT, tokenizer_class="BertTokenizer", strip_accents=False)),
    ("no chinese chars", "bert", [],
     dict(BERT, tokenizer_class="BertTokenizer", tokenize_chinese_chars=False)),
    ("no class: model_type", "bert", CASED, BERT),
    ("no tokenizer_config", "bert", CASED, None),
    ("distilbert class, cased file", "distilbert", CASED,
     dict(BERT, tokenizer_class="DistilBertTokenizer")),
    ("distilbert, no class", "distilbert", CASED, BERT),
    ("roberta as written, prefix space", "roberta", [["/pre_tokenizer/add_prefix_space", True]],
     dict(ROBERTA, tokenizer_class="PreTrainedTokenizerFast")),
    ("roberta class, file adds prefix space", "roberta",
     [["/pre_tokenizer/add_prefix_space", True]], dict(ROBERTA, tokenizer_class="RobertaTokenizer")),
    ("roberta class, config adds prefix space", "roberta", [],
     dict(ROBERTA, tokenizer_class="RobertaTokenizerFast", add_prefix_space=True)),
    ("roberta, no class", "roberta", [["/pre_tokenizer/add_prefix_space", True]], ROBERTA),
]


def edited(tj, edits):
    for pointer, value in edits:
        parts = pointer.strip("/").split("/")
        node = tj
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = value
    return tj


def main():
    out, differing = [], 0
    for name, fixture, edits, cfg in VARIANTS:
        src = os.path.join(ROOT, "scorers", fixture)
        with tempfile.TemporaryDirectory() as d:
            for f in ("config.json", "tokenizer.json"):
                shutil.copy(os.path.join(src, f), d)
            tj = edited(json.load(open(os.path.join(src, "tokenizer.json"))), edits)
            json.dump(tj, open(os.path.join(d, "tokenizer.json"), "w"))
            if cfg is not None:
                json.dump(cfg, open(os.path.join(d, "tokenizer_config.json"), "w"))
            hf = AutoTokenizer.from_pretrained(d)
            written = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
            ids = [hf(t)["input_ids"] for t in TEXTS]
            differs = sum(i != written.encode(t).ids for i, t in zip(ids, TEXTS))
            differing += differs > 0
            model_type = json.load(open(os.path.join(d, "config.json")))["model_type"]
            out.append({"name": name, "fixture": fixture, "edits": edits, "config": cfg,
                        "model_type": model_type, "class": type(hf).__name__, "ids": ids,
                        "texts_differing_from_file": differs})
            print(f"{name}: {type(hf).__name__}, {differs} of {len(TEXTS)} differ from the file")
    assert differing >= 5, "the variants must exercise the rebuild"
    json.dump({"transformers_version": transformers.__version__, "texts": TEXTS,
               "variants": out}, open(OUT, "w"), indent=1, ensure_ascii=False)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
