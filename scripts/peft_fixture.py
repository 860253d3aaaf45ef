"""What the PEFT fixture scripts (make_lora_fixture.py, make_dora_fixture.py,
make_peft_extras_fixture.py) share: the tiny base models, the summed NLL they score an
adapter by, and saving an adapter PEFT made, reloaded from disk and checked.
Imported by those scripts; running it does nothing."""
import json
import os

import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

ROOT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")
OUT = os.path.join(ROOT, "lora")


def base(name):
    """A tiny model of tests/fixtures/models, in float32, in eval mode."""
    return AutoModelForCausalLM.from_pretrained(
        os.path.join(ROOT, "models", name), dtype=torch.float32
    ).eval()


def nll(model, ids):
    """(summed next-token NLL, token count) of the rows `ids`."""
    ids = torch.tensor(ids)
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
    lp = torch.log_softmax(logits[:, :-1], dim=-1)
    tgt = ids[:, 1:]
    return float(-lp.gather(-1, tgt.unsqueeze(-1)).sum()), int(tgt.numel())


def lora_ids():
    """The LoRA fixture's token ids (lora/expected.json, written by make_lora_fixture.py)."""
    return json.load(open(os.path.join(OUT, "expected.json")))["ids"]


def randomise(seed):
    """Set an adapter's trainable tensors from a generator seeded `seed`, so that each part
    changes the model: A and B to N(0, 0.2^2); DoRA's magnitudes scaled by 1 + 0.1 N(0, 1);
    anything else trained (a modules_to_save copy, a bias) moved by 0.1 N(0, 1)."""
    def go(model):
        g = torch.Generator().manual_seed(seed)
        for n, p in model.named_parameters():
            if not p.requires_grad:
                continue
            with torch.no_grad():
                if "lora_magnitude_vector" in n:
                    p.mul_(1 + 0.1 * torch.randn(p.shape, generator=g))
                elif "lora_" in n:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.2)
                else:
                    p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return go


def keep_adapter_name(path):
    """Rewrite the A / B keys of a saved adapter with the adapter's name, as some PEFT
    versions saved them (`.lora_A.default.weight`)."""
    t = load_file(path)
    t = {
        k.replace(".lora_A.weight", ".lora_A.default.weight").replace(
            ".lora_B.weight", ".lora_B.default.weight"
        ): v
        for k, v in t.items()
    }
    save_file(t, path, metadata={"format": "pt"})


def make(name, base_name, cfg, randomise, ids, keep_default=False, merge_check=False):
    """PEFT's adapter `cfg` on `base_name`, its trainable tensors set by `randomise(model)`,
    saved to lora/`name` (keys with the adapter's name if `keep_default`), reloaded from disk
    as a user would and scored on `ids`: (nll, tokens) and the saved keys. Checks that the
    reload scores as the model in memory, that the adapter is not the identity, and with
    `merge_check` that PEFT's merge_and_unload scores the same."""
    m = get_peft_model(base(base_name), cfg)
    randomise(m)
    m.eval()
    d = os.path.join(OUT, name)
    m.save_pretrained(d, safe_serialization=True)
    os.remove(os.path.join(d, "README.md"))  # PEFT's model-card template
    path = os.path.join(d, "adapter_model.safetensors")
    keys = sorted(load_file(path))
    if keep_default:
        keep_adapter_name(path)
    loaded = PeftModel.from_pretrained(base(base_name), d).eval()
    got = nll(loaded, ids)
    assert abs(got[0] - nll(m, ids)[0]) < 1e-4 * abs(got[0]), "reload changed the adapter"
    assert abs(got[0] - nll(base(base_name), ids)[0]) > 1e-3, "adapter is the identity"
    if merge_check:
        merged = nll(loaded.merge_and_unload(), ids)
        assert abs(merged[0] - got[0]) < 1e-4 * abs(got[0]), "peft's merge differs"
    return got, keys
