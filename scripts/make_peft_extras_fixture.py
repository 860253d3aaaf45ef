"""Fixtures for PEFT adapters that hold more than LoRA on the projections, for tests/lora.rs
(`folded_adapters_score_as_transformers_plus_peft`), written by PEFT (tests never run Python).

Writes under tests/fixtures/lora/:
- peft-qwen2-extras/: on models/tiny-qwen2 (q/k/v biases, LM head tied to the embedding):
  LoRA r=2, alpha=4 on [q_proj, v_proj], bias="lora_only" (the q and v biases train and are
  saved), modules_to_save=["lm_head"] (a whole copy of the head, so the head unties from the
  embedding).
- peft-gemma-embed/: on models/tiny-gemma (tied head, embedding scaled by sqrt(hidden)):
  LoRA on [embed_tokens, q_proj, lm_head], r=2, alpha=4, rank_pattern {embed_tokens: 3}
  (PEFT's lora_embedding_A / _B, and A / B on the tied head).
- peft-llama-save/: on models/tiny-llama (untied head): LoRA r=2, alpha=2 on [o_proj, lm_head],
  modules_to_save=["embed_tokens", "norm"] (PEFT matches module names by suffix, so "norm"
  also saves every layer's input_layernorm and post_attention_layernorm), bias="all" (Llama
  has no biases: nothing more is saved).
- extras.json: for each, the summed NLL and token count transformers + peft compute on the
  LoRA fixture's ids (lora/expected.json) with the adapter loaded from disk by
  `PeftModel.from_pretrained`, and the keys PEFT saved. Where the head is untied, PEFT's
  merge_and_unload gives the same NLL (checked); where it is tied and the adapter changes the
  embedding or the head, merge_and_unload changes both through the shared tensor, so it is
  not PEFT's forward and is not used.

All adapter tensors (A, B, the saved copies and biases) are randomised, so each part changes
the model. Run: python scripts/make_peft_extras_fixture.py   (torch, transformers, peft;
shared code in peft_fixture.py)
"""
import json
import os

import torch
from peft import LoraConfig

from peft_fixture import OUT, lora_ids, make, randomise

torch.manual_seed(0)
torch.set_num_threads(1)
IDS = lora_ids()



cases = {
    "peft-qwen2-extras": (
        "tiny-qwen2",
        LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], bias="lora_only",
                   modules_to_save=["lm_head"], task_type="CAUSAL_LM"),
        21,
        False,
    ),
    "peft-gemma-embed": (
        "tiny-gemma",
        LoraConfig(r=2, lora_alpha=4, target_modules=["embed_tokens", "q_proj", "lm_head"],
                   rank_pattern={"embed_tokens": 3}, task_type="CAUSAL_LM"),
        22,
        False,
    ),
    "peft-llama-save": (
        "tiny-llama",
        LoraConfig(r=2, lora_alpha=2, target_modules=["o_proj", "lm_head"], bias="all",
                   modules_to_save=["embed_tokens", "norm"], task_type="CAUSAL_LM"),
        23,
        True,
    ),
}
results, keys = {}, {}
for name, (base_name, cfg, seed, untied) in cases.items():
    results[name], keys[name] = make(name, base_name, cfg, randomise(seed), IDS,
                                     merge_check=untied)
json.dump(
    {
        "base": {k: v[0] for k, v in cases.items()},
        "nll_sum": {k: v[0] for k, v in results.items()},
        "tokens": {k: v[1] for k, v in results.items()},
        "keys": keys,
        "peft_version": __import__("peft").__version__,
        "transformers_version": __import__("transformers").__version__,
        "torch_version": torch.__version__,
    },
    open(os.path.join(OUT, "extras.json"), "w"),
    indent=1,
)
print(json.dumps(results))
