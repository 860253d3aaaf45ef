#!/usr/bin/env python3
"""YaRN rope scaling as transformers computes it, for tests/rope_scaling.rs (tests never run
Python).

Each case is a fixture model (tests/fixtures/models/tiny-{qwen2,llama}) with a `rope_scaling`
of type yarn written into its config.json (the tests write the same config into a copy of the
model's directory). Writes tests/fixtures/rope/yarn.json: per case, that `rope_scaling`, and
what transformers 5 gives the model so configured: the inverse frequencies and attention
factor of its rotary embedding (`model.model.rotary_emb`), the logits of a fixed sequence at
some positions (eager attention, float32) and the greedy continuation of its first tokens (8 new tokens, the
KV cache on).

Run from the repository root with the project venv (CPU, seconds):
    /work/venv/bin/python scripts/make_yarn_fixture.py
"""
import json
import pathlib
import shutil
import tempfile

import torch
from transformers import AutoModelForCausalLM

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
ROOT = pathlib.Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
OUT = FIX / "rope"

CASES = [
    # Qwen2.5's documented long-context setting, scaled to the tiny model (old "type" key).
    ("tiny-qwen2", {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}),
    # DeepSeek-style mscale pair, custom betas.
    ("tiny-llama", {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 16,
                    "beta_fast": 16, "beta_slow": 2, "mscale": 0.707, "mscale_all_dim": 1.0}),
    # An explicit attention factor, and the correction range left untruncated.
    ("tiny-llama", {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 64,
                    "attention_factor": 1.25, "truncate": False}),
]
IDS = [0] + [(7 * i + 3) % 297 + 3 for i in range(60)]
# Positions whose logits are kept: inside and past each case's original context.
POSITIONS = [0, 9, 20, 31, 47, 60]


def main() -> None:
    rows = []
    for model_name, scaling in CASES:
        src = FIX / "models" / model_name
        with tempfile.TemporaryDirectory() as tmp:
            tmp = pathlib.Path(tmp)
            for f in src.iterdir():
                shutil.copy(f, tmp / f.name)
            config = json.loads((src / "config.json").read_text())
            config.pop("rope_parameters", None)
            config["rope_theta"] = 1000000.0 if model_name == "tiny-qwen2" else 10000.0
            config["rope_scaling"] = scaling
            (tmp / "config.json").write_text(json.dumps(config, indent=2))
            model = AutoModelForCausalLM.from_pretrained(
                tmp, dtype=torch.float32, attn_implementation="eager"
            ).eval()
            rotary = model.model.rotary_emb
            assert rotary.rope_type == "yarn", rotary.rope_type
            with torch.no_grad():
                logits = model(torch.tensor([IDS])).logits[0]
                out = model.generate(torch.tensor([IDS[:12]]), max_new_tokens=8, do_sample=False,
                                     eos_token_id=None, pad_token_id=2)
        rows.append({
            "model": model_name,
            "rope_theta": config["rope_theta"],
            "rope_scaling": scaling,
            "inv_freq": rotary.inv_freq.tolist(),
            "attention_factor": float(rotary.attention_scaling),
            "ids": IDS,
            "positions": POSITIONS,
            "logits": logits[POSITIONS].tolist(),
            "greedy": out[0][12:].tolist(),
        })
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "yarn.json").write_text(json.dumps({"cases": rows}) + "\n")
    print("wrote", OUT / "yarn.json", [round(r["attention_factor"], 4) for r in rows])


if __name__ == "__main__":
    main()
