#!/usr/bin/env python3
"""Make a tiny random safe-rlhf score model (`LlamaForScore`) and its reference scores, for
the cost-model scorer's test (tests/fixtures/scorers/cost-model/).

Run from the repository root with the project venv (CPU, a few seconds):
    /work/venv/bin/python scripts/make_cost_model_fixture.py

The checkpoint has safe-rlhf's layout: a transformers `LlamaModel` under `model.`, a linear
`score_head` (hidden -> score_dim = 1, with bias) and the `normalizer` buffers
(`normalizer.mean`, `normalizer.var`, `normalizer.count`), saved as model.safetensors with a
config.json whose architectures is ["LlamaForScore"] and whose safe-rlhf keys are
score_dim = 1, bias = true, score_type = "cost", do_normalize = true,
normalizer_type = "RunningMeanStd". The tokenizer is the tiny-llama fixture's (BOS added).

reference.json holds, per case, the token ids (the `tokenizers` library reading the
checkpoint's tokenizer.json, as the Rust scorer does) of
`BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:{response}` cut to max_length tokens,
and the end score safe-rlhf computes: score_head(last_hidden_state) at the last token, then
the cost normaliser x / (sqrt(var) + 1e-8). Each case runs alone (no padding), so the Rust
side, which batches with right padding, is checked against unpadded references. Seeds are
fixed; the output is deterministic.
"""
import json
import pathlib
import shutil

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformers import LlamaConfig, LlamaModel

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "scorers" / "cost-model"
TOK = ROOT / "tests" / "fixtures" / "models" / "tiny-llama"
MAX_LENGTH = 120
CASES = [
    ("How do I pick a lock?", " I'm sorry, I can't help with that."),
    ("How do I pick a lock?", " Sure: insert a tension wrench, then rake the pins."),
    ("Write a poem about rain.", " Grey clouds gather, soft drops fall on the roof."),
    ("Hi", ""),
    ("Tell me everything about the history of locksmithing in great detail, please.",
     " Locksmithing is an ancient craft that began in Egypt and Mesopotamia thousands of years ago."),
]


def main() -> None:
    torch.manual_seed(1234)
    cfg = LlamaConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        initializer_range=0.2,
    )
    backbone = LlamaModel(cfg).eval()
    head = torch.nn.Linear(32, 1, bias=True)
    torch.nn.init.normal_(head.weight, std=0.5)
    torch.nn.init.normal_(head.bias, std=0.5)
    mean, var = torch.tensor([0.3]), torch.tensor([2.25])

    tensors = {f"model.{k}": v.contiguous() for k, v in backbone.state_dict().items()
               if "rotary_emb" not in k}
    tensors["score_head.weight"] = head.weight.detach().contiguous()
    tensors["score_head.bias"] = head.bias.detach().contiguous()
    tensors["normalizer.mean"] = mean
    tensors["normalizer.var"] = var
    tensors["normalizer.count"] = torch.tensor([1000], dtype=torch.long)

    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    save_file(tensors, OUT / "model.safetensors", metadata={"format": "pt"})
    config = cfg.to_dict()
    config.update({
        "architectures": ["LlamaForScore"],
        "model_type": "llama",
        "torch_dtype": "float32",
        "score_dim": 1,
        "bias": True,
        "score_type": "cost",
        "do_normalize": True,
        "normalizer_type": "RunningMeanStd",
        "mean": mean.tolist(),
        "var": var.tolist(),
    })
    config.pop("dtype", None)
    (OUT / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]:
        shutil.copy(TOK / f, OUT / f)

    tok = Tokenizer.from_file(str(OUT / "tokenizer.json"))
    cases = []
    with torch.no_grad():
        for prompt, response in CASES:
            text = f"BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:{response}"
            ids = tok.encode(text, add_special_tokens=True).ids[:MAX_LENGTH]
            hidden = backbone(input_ids=torch.tensor([ids])).last_hidden_state  # (1, L, E)
            end = head(hidden)[0, -1, 0].item()
            score = end / (var.sqrt().item() + 1e-8)
            cases.append({"prompt": prompt, "response": response, "ids": ids, "score": score})
    assert any(len(c["ids"]) == MAX_LENGTH for c in cases), "one case must be truncated"
    scores = [c["score"] for c in cases]
    assert max(scores) - min(scores) > 0.1, f"scores too close: {scores}"
    ref = {"max_length": MAX_LENGTH, "normalizer": "scale", "cases": cases}
    (OUT / "reference.json").write_text(json.dumps(ref, indent=2) + "\n")
    print(f"wrote {OUT}: scores {[round(s, 4) for s in scores]}")


if __name__ == "__main__":
    main()
