"""DoRA fixtures for tests/lora.rs (`dora_adapters_score_as_transformers_plus_peft`), written by
PEFT (tests never run Python).

Writes under tests/fixtures/lora/:
- peft-llama-dora/: a DoRA adapter (use_dora=True) PEFT made on models/tiny-llama, r=4,
  alpha=8, target_modules "all-linear"; A and B random, each magnitude m scaled by 1 + 0.1 N(0,1)
  off PEFT's start (the rows' norms), so both the direction and the magnitude change the model.
- peft-qwen2-dora/: on models/tiny-qwen2 (projection biases, tied head), r=3, alpha=5,
  use_rslora, [q_proj, v_proj, down_proj] with rank_pattern {q_proj: 2}, the adapter's
  name kept in the A / B keys (".lora_A.default.weight").
- dora.json: for each, the summed NLL and token count transformers + peft compute on the LoRA
  fixture's ids (lora/expected.json), with the adapter applied by PEFT's DoRA forward
  (eval mode) and, as a check on the script, after PEFT's merge_and_unload.

Run: python scripts/make_dora_fixture.py   (torch, transformers, peft)
"""
import json
import os

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
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
        with torch.no_grad():
            if "lora_magnitude_vector" in n:
                p.mul_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def make(name, base_name, cfg, seed, keep_default):
    m = get_peft_model(base(base_name), cfg)
    randomise(m, seed)
    m.eval()
    d = os.path.join(OUT, name)
    m.save_pretrained(d, safe_serialization=True)
    os.remove(os.path.join(d, "README.md"))  # PEFT's model-card template
    path = os.path.join(d, "adapter_model.safetensors")
    keys = sorted(load_file(path))
    assert any("lora_magnitude_vector" in k for k in keys), keys
    if keep_default:
        t = load_file(path)
        t = {
            k.replace(".lora_A.weight", ".lora_A.default.weight").replace(
                ".lora_B.weight", ".lora_B.default.weight"
            ): v
            for k, v in t.items()
        }
        save_file(t, path, metadata={"format": "pt"})
    # Reload from disk, as a user would.
    loaded = PeftModel.from_pretrained(base(base_name), d).eval()
    got = nll(loaded)
    assert abs(got[0] - nll(m)[0]) < 1e-4 * abs(got[0]), "reload changed the adapter"
    assert abs(got[0] - nll(base(base_name))[0]) > 1e-2, "adapter is the identity"
    merged = nll(loaded.merge_and_unload())
    assert abs(merged[0] - got[0]) < 1e-4 * abs(got[0]), "peft's DoRA merge differs"
    return got, keys


results = {}
keys = {}
results["peft-llama-dora"], keys["peft-llama-dora"] = make(
    "peft-llama-dora",
    "tiny-llama",
    LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules="all-linear",
               task_type="CAUSAL_LM"),
    11,
    False,
)
results["peft-qwen2-dora"], keys["peft-qwen2-dora"] = make(
    "peft-qwen2-dora",
    "tiny-qwen2",
    LoraConfig(r=3, lora_alpha=5, use_rslora=True, use_dora=True,
               target_modules=["q_proj", "v_proj", "down_proj"], rank_pattern={"q_proj": 2},
               task_type="CAUSAL_LM"),
    12,
    True,
)
json.dump(
    {
        "base": {"peft-llama-dora": "tiny-llama", "peft-qwen2-dora": "tiny-qwen2"},
        "nll_sum": {k: v[0] for k, v in results.items()},
        "tokens": {k: v[1] for k, v in results.items()},
        "magnitude_key_example": {k: next(x for x in v if "magnitude" in x) for k, v in keys.items()},
        "peft_version": __import__("peft").__version__,
        "transformers_version": __import__("transformers").__version__,
        "torch_version": torch.__version__,
    },
    open(os.path.join(OUT, "dora.json"), "w"),
    indent=1,
)
print(json.dumps(results))
