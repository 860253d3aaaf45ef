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
the model. Run: python scripts/make_peft_extras_fixture.py   (torch, transformers, peft)
"""
import json
import os

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

torch.manual_seed(0)
torch.set_num_threads(1)
ROOT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")
OUT = os.path.join(ROOT, "lora")
IDS = json.load(open(os.path.join(OUT, "expected.json")))["ids"]


def base(name):
    return AutoModelForCausalLM.from_pretrained(
        os.path.join(ROOT, "models", name), dtype=torch.float32
    ).eval()


def nll(model):
    ids = torch.tensor(IDS)
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
    lp = torch.log_softmax(logits[:, :-1], dim=-1)
    tgt = ids[:, 1:]
    return float(-lp.gather(-1, tgt.unsqueeze(-1)).sum()), int(tgt.numel())


def randomise(model, seed):
    g = torch.Generator().manual_seed(seed)
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        with torch.no_grad():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
            else:  # a modules_to_save copy or a trained bias
                p.add_(torch.randn(p.shape, generator=g) * 0.1)


def make(name, base_name, cfg, seed, untied):
    m = get_peft_model(base(base_name), cfg)
    randomise(m, seed)
    m.eval()
    d = os.path.join(OUT, name)
    m.save_pretrained(d, safe_serialization=True)
    os.remove(os.path.join(d, "README.md"))  # PEFT's model-card template
    keys = sorted(load_file(os.path.join(d, "adapter_model.safetensors")))
    # Reload from disk, as a user would.
    loaded = PeftModel.from_pretrained(base(base_name), d).eval()
    got = nll(loaded)
    assert abs(got[0] - nll(m)[0]) < 1e-4 * abs(got[0]), "reload changed the adapter"
    assert abs(got[0] - nll(base(base_name))[0]) > 1e-2, "adapter is the identity"
    if untied:
        merged = nll(loaded.merge_and_unload())
        assert abs(merged[0] - got[0]) < 1e-4 * abs(got[0]), "peft's merge differs"
    return got, keys


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
    results[name], keys[name] = make(name, base_name, cfg, seed, untied)
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
