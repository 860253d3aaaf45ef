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

Run: python scripts/make_dora_fixture.py   (torch, transformers, peft; shared code in
peft_fixture.py)
"""
import json
import os

import torch
from peft import LoraConfig

from peft_fixture import OUT, lora_ids, make, randomise

torch.manual_seed(0)
torch.set_num_threads(1)
IDS = lora_ids()



def dora(name, base_name, cfg, seed, keep_default):
    got, keys = make(name, base_name, cfg, randomise(seed), IDS, keep_default, merge_check=True)
    assert any("lora_magnitude_vector" in k for k in keys), keys
    return got, keys


results = {}
keys = {}
results["peft-llama-dora"], keys["peft-llama-dora"] = dora(
    "peft-llama-dora",
    "tiny-llama",
    LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules="all-linear",
               task_type="CAUSAL_LM"),
    11,
    False,
)
results["peft-qwen2-dora"], keys["peft-qwen2-dora"] = dora(
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
