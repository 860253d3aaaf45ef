"""LoRA fixtures for tests/lora.rs, written by PEFT (tests never run Python).

Writes under tests/fixtures/lora/:
- peft-llama/: an adapter PEFT made on models/tiny-llama (r=4, alpha=8, target_modules
  "all-linear", lora_dropout 0.1, random A and B so it changes the model), saved by
  `save_pretrained` (keys without ".default").
- peft-qwen2-rslora/: on models/tiny-qwen2 (projection biases, tied head), r=3, alpha=5,
  use_rslora, target_modules as a list [q_proj, v_proj, down_proj], with the adapter's name
  kept in the keys (".lora_A.default.weight"), as some PEFT versions saved them.
- peft-qwen2-layers/: on models/tiny-qwen2, r=2, alpha=6, [q_proj, up_proj] on layer 1 only
  (`layers_to_transform = [1]`).
- peft-qwen2-patterns/: on models/tiny-qwen2, r=2, alpha=4 on [q_proj, v_proj, down_proj]
  with `rank_pattern = {q_proj: 4, layers.1.mlp.down_proj: 3}` and `alpha_pattern =
  {v_proj: 2.5}` (per-module ranks and scales).
- expected.json: token ids, and for each adapter (and for elastica-trained/, an adapter that
  `elastica train --lora-rank 4` wrote and that is committed here) the summed NLL and token
  count transformers + peft compute on those ids.

Loading elastica-trained/ with `peft.PeftModel.from_pretrained` is itself the check that an
adapter elastica writes loads in PEFT unchanged; the script also checks that it is not the
identity (its NLL differs from the base's) and that PEFT's merge_and_unload gives the same NLL.

Run: python scripts/make_lora_fixture.py   (torch, transformers, peft; shared code in
peft_fixture.py)
"""
import json
import os
import sys

import torch
from peft import LoraConfig, PeftModel

from peft_fixture import OUT, base, make, nll, randomise

torch.manual_seed(0)
torch.set_num_threads(1)

# Fixed ids inside the fixture vocabulary (300), two rows of 12, no padding.
IDS = [[(i * 37 + 11 * r + 5) % 300 for i in range(12)] for r in range(2)]



results = {}
results["peft-llama"] = make(
    "peft-llama",
    "tiny-llama",
    LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear",
               task_type="CAUSAL_LM"),
    randomise(1),
    IDS,
    keep_default=False,
)[0]
results["peft-qwen2-rslora"] = make(
    "peft-qwen2-rslora",
    "tiny-qwen2",
    LoraConfig(r=3, lora_alpha=5, use_rslora=True, target_modules=["q_proj", "v_proj", "down_proj"],
               task_type="CAUSAL_LM"),
    randomise(2),
    IDS,
    keep_default=True,
)[0]

results["peft-qwen2-layers"] = make(
    "peft-qwen2-layers",
    "tiny-qwen2",
    LoraConfig(r=2, lora_alpha=6, target_modules=["q_proj", "up_proj"], layers_to_transform=[1],
               task_type="CAUSAL_LM"),
    randomise(3),
    IDS,
    keep_default=False,
)[0]

results["peft-qwen2-patterns"] = make(
    "peft-qwen2-patterns",
    "tiny-qwen2",
    LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "down_proj"],
               rank_pattern={"q_proj": 4, "layers.1.mlp.down_proj": 3},
               alpha_pattern={"v_proj": 2.5}, task_type="CAUSAL_LM"),
    randomise(4),
    IDS,
    keep_default=False,
)[0]

# The adapter elastica trained: PEFT must load it unchanged.
el = os.path.join(OUT, "elastica-trained")
m = PeftModel.from_pretrained(base("tiny-llama"), el).eval()
got = nll(m, IDS)
assert abs(got[0] - nll(base("tiny-llama"), IDS)[0]) > 1e-3, "elastica's adapter is the identity"
merged = nll(m.merge_and_unload(), IDS)
assert abs(merged[0] - got[0]) < 1e-4 * abs(got[0]), "peft merge differs"
results["elastica-trained"] = got
print("peft loaded elastica-trained/: nll_sum %.6f over %d tokens" % got, file=sys.stderr)

json.dump(
    {
        "ids": IDS,
        "base": {"peft-llama": "tiny-llama", "peft-qwen2-rslora": "tiny-qwen2",
                 "peft-qwen2-layers": "tiny-qwen2", "peft-qwen2-patterns": "tiny-qwen2",
                 "elastica-trained": "tiny-llama"},
        "nll_sum": {k: v[0] for k, v in results.items()},
        "tokens": {k: v[1] for k, v in results.items()},
        "peft_version": __import__("peft").__version__,
        "transformers_version": __import__("transformers").__version__,
        "torch_version": torch.__version__,
    },
    open(os.path.join(OUT, "expected.json"), "w"),
    indent=1,
)
print("ok", file=sys.stderr)
