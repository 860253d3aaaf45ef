#!/usr/bin/env python3
"""Make the transformers reference fixtures under tests/fixtures/ (run by hand, never by tests).

    /work/venv/bin/python scripts/make_fixtures.py

What it writes (tests/fixtures/README.md describes every file):
  tokenizer.json, tokenizer_config.json, special_tokens_map.json   tiny byte-level BPE
  models/tiny-{llama,qwen2,gemma}/                                  random HF checkpoints (float32)
  parity/tiny-{llama,qwen2,gemma}.safetensors                       logits, loss, greedy ids
  tokenizer_cases.json                                              encode / chat-template cases
  sft/data.jsonl, sft/trajectory.json, sft/final.safetensors        SFT reference run

Everything is deterministic: fixed seeds, one CPU thread, float32, eager attention. The script
checks its own outputs (reload -> identical logits, greedy == argmax of uncached forward, the old
config dialect loads to the same logits) and fails loudly if any check does not hold.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

import transformers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GemmaConfig,
    LlamaConfig,
    Qwen2Config,
    get_linear_schedule_with_warmup,
)

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"

# One thread: float32 reductions then run in one fixed order, so reruns are bit-identical.
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

VOCAB_SIZE = 300
SPECIALS = ["<s>", "</s>", "<pad>"]  # ids 0, 1, 2 (pad is deliberately not 0)
BOS, EOS, PAD = "<s>", "</s>", "<pad>"

# Zephyr-style template written over several lines with block tags at line ends, so that
# jinja2's trim_blocks / lstrip_blocks (which transformers turns on) change the output.
CHAT_TEMPLATE = """{{ bos_token }}
{% for message in messages %}
    {% if message['role'] == 'system' %}
<|system|>
{{ message['content'] | trim }}{{ eos_token }}
    {% elif message['role'] == 'user' %}
<|user|>
{{ message['content'] | trim }}{{ eos_token }}
    {% elif message['role'] == 'assistant' %}
<|assistant|>
{{ message['content'] | trim }}{{ eos_token }}
    {% else %}
{{ raise_exception('Unknown role: ' + message['role']) }}
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}
<|assistant|>
{% endif %}"""

# Corpus for the BPE merges: fixed English sentences (and the SFT data below).
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A language model predicts the next token from the tokens before it.",
    "Alignment fine-tuning changes the behaviour of a pre-trained model only a little.",
    "Models resist alignment: after a small perturbation they return to the pre-training distribution.",
    "The movie was wonderful, the actors were great and the story moved me.",
    "The movie was terrible, boring and far too long.",
    "I would watch this film again with my friends.",
    "Please write a short answer to the question below.",
    "What is the capital of France? The capital of France is Paris.",
    "How many legs does a spider have? A spider has eight legs.",
    "Compression and prediction are two sides of the same coin.",
    "The elasticity of a model is its tendency to spring back to its original shape.",
    "She sells sea shells by the sea shore, and the shells she sells are surely sea shells.",
    "Numbers like 1, 2, 3, 10, 42 and 2024 appear in text too.",
    "Tokens, tokens everywhere: the tokenizer splits words into pieces.",
    "It was the best of times, it was the worst of times.",
    "To be or not to be, that is the question.",
    "The weather today is sunny with a light breeze from the west.",
]

SFT_RECORDS = [
    {"prompt": "Question: What colour is the sky?\nAnswer:", "response": " The sky is blue."},
    {"prompt": "Review: The film was great.\nSentiment:", "response": " positive"},
    {"prompt": "Translate to French: cat\n", "response": "chat"},
    {"prompt": "Question: How many legs does a spider have?\nAnswer:", "response": " Eight legs."},
    {"prompt": "Review: Boring and far too long.\nSentiment:", "response": " negative"},
    {"prompt": "Complete: The quick brown fox", "response": " jumps over the lazy dog."},
    {"prompt": "Question: What is the capital of France?\nAnswer:", "response": " Paris, of course."},
    {"prompt": "Say something kind.", "response": " You are doing very well today!"},
]

TOKENIZER_TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    " leading space and  two  spaces",
    "trailing spaces   ",
    "line one\nline two\n\nline four",
    "tabs\tand\r\nwindows newlines",
    "Numbers: 3.14159, 2024, -7",
    "café naïve résumé",
    "日本語のテキスト",
    "emoji 🙂 and 👍🏽!",
    "Ünïcödé mixed with ASCII, über alles.",
    "special tokens inside: <s> hello </s> <pad>",
    "",
]

CHAT_CASES = [
    [{"role": "user", "content": "Hello, who are you?"}],
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "  What is 2 + 2?  "},
    ],
    [
        {"role": "user", "content": "Tell me a joke."},
        {"role": "assistant", "content": "Why did the chicken cross the road?"},
        {"role": "user", "content": "Why?\nTell me."},
    ],
]


def check(cond: bool, what: str) -> None:
    if not cond:
        sys.exit(f"make_fixtures: CHECK FAILED: {what}")


def write_json(path: Path, obj) -> None:
    text = json.dumps(obj, indent=2, ensure_ascii=False)
    # Lists of numbers on one line (token ids), so the files stay readable.
    text = re.sub(r"\[\s*(-?[0-9][0-9.e+-]*(?:,\s*-?[0-9][0-9.e+-]*)*)\s*\]",
                  lambda m: "[" + re.sub(r",\s*", ", ", m.group(1)) + "]", text)
    check(json.loads(text) == obj, f"{path}: compact JSON round-trips")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# a) tokenizer
# ---------------------------------------------------------------------------------------------


def build_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = CORPUS + [r["prompt"] + r["response"] for r in SFT_RECORDS]
    tok.train_from_iterator(corpus, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    # Like Llama: <s> is prepended when add_special_tokens=True, nothing is appended.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A {BOS} $B",
        special_tokens=[(BOS, bos_id)],
    )
    check(tok.get_vocab_size() == VOCAB_SIZE, f"vocab size {tok.get_vocab_size()} != {VOCAB_SIZE}")
    check([tok.token_to_id(s) for s in SPECIALS] == [0, 1, 2], "special token ids are 0,1,2")
    return tok


def tokenizer_config(with_chat_template: bool) -> dict:
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 128,
        "added_tokens_decoder": {
            str(i): {
                "content": s,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for i, s in enumerate(SPECIALS)
        },
    }
    if with_chat_template:
        cfg["chat_template"] = CHAT_TEMPLATE
    return cfg


def write_tokenizer_files(tok: Tokenizer, d: Path, with_chat_template: bool) -> None:
    """Paper-era layout: chat_template inside tokenizer_config.json (transformers 5 would write a
    separate chat_template.jinja instead; see README)."""
    d.mkdir(parents=True, exist_ok=True)
    tok.save(str(d / "tokenizer.json"))
    write_json(d / "tokenizer_config.json", tokenizer_config(with_chat_template))
    write_json(
        d / "special_tokens_map.json",
        {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD},
    )


def tokenizer_cases(tok: Tokenizer, hf_dir: Path) -> dict:
    hf = AutoTokenizer.from_pretrained(str(hf_dir))
    check(hf.chat_template is not None, "chat template loaded by transformers")
    texts = []
    for t in TOKENIZER_TEXTS:
        with_sp = tok.encode(t, add_special_tokens=True).ids
        without = tok.encode(t, add_special_tokens=False).ids
        # The Python tokenizers lib and transformers must agree, or the fixture is ambiguous.
        check(hf(t, add_special_tokens=True)["input_ids"] == with_sp, f"hf ids (special) for {t!r}")
        check(hf(t, add_special_tokens=False)["input_ids"] == without, f"hf ids for {t!r}")
        decoded = tok.decode(without, skip_special_tokens=False)
        texts.append(
            {
                "text": t,
                "ids_with_special": with_sp,
                "ids_without_special": without,
                "decoded_without_special": decoded,
            }
        )
    chats = []
    for msgs in CHAT_CASES:
        for gen in (True, False):
            rendered = hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
            chats.append({"messages": msgs, "add_generation_prompt": gen, "rendered": rendered})
    return {
        "tokenizer": "tests/fixtures/tokenizer.json",
        "chat_template_from": "tests/fixtures/models/tiny-qwen2/tokenizer_config.json",
        "special_ids": {"bos": 0, "eos": 1, "pad": 2},
        "texts": texts,
        "chats": chats,
    }


# ---------------------------------------------------------------------------------------------
# b) tiny random checkpoints
# ---------------------------------------------------------------------------------------------

COMMON = dict(
    vocab_size=VOCAB_SIZE,
    num_hidden_layers=2,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=2,
    max_position_embeddings=128,
)


def llama_config() -> LlamaConfig:
    return LlamaConfig(
        **COMMON,
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    )


def qwen2_config() -> Qwen2Config:
    return Qwen2Config(
        **COMMON,
        hidden_size=48,
        intermediate_size=80,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        use_sliding_window=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    )


def gemma_config() -> GemmaConfig:
    return GemmaConfig(
        **COMMON,
        hidden_size=64,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=24,
        hidden_act="gelu_pytorch_tanh",
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )


def randomize(model: torch.nn.Module, seed: int, gemma: bool) -> None:
    """Wide random weights so that logits are far from uniform (per-position logit std 2-3,
    entropy ~3 nats of ln(300)=5.7) and parity tests have teeth. The residual-writing projections
    (o_proj, down_proj) are wider so the residual stream is not just the current token's
    embedding, which with tied embeddings would make every model predict its input token."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied weights appear once
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith("norm.weight"):
                # Gemma applies (1 + w): w itself is the noise; Llama/Qwen2 apply w directly.
                p.copy_(0.2 * noise if gemma else 1.0 + 0.2 * noise)
            elif name.endswith(".bias"):
                p.copy_(0.2 * noise)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                p.copy_(0.6 * noise)
            elif name.endswith(("embed_tokens.weight", "lm_head.weight")):
                p.copy_(0.3 * noise)
            else:
                p.copy_(0.25 * noise)


def old_dialect(cfg_path: Path) -> dict:
    """Rewrite a transformers-5 config.json into the paper-era dialect (top-level rope_theta,
    rope_scaling with both "type" and "rope_type", torch_dtype; no rope_parameters / dtype)."""
    cfg = json.loads(cfg_path.read_text())
    rp = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rp.pop("rope_theta")
    rope_type = rp.pop("rope_type")
    cfg["rope_scaling"] = None if rope_type == "default" else {"type": rope_type, "rope_type": rope_type, **rp}
    cfg["torch_dtype"] = cfg.pop("dtype")
    # Llama-2/3.1 configs carry no head_dim: the reader must derive hidden_size / heads.
    cfg.pop("head_dim", None)
    cfg["transformers_version"] = "4.45.2"
    write_json(cfg_path, cfg)
    return cfg


def llama3_inv_freq() -> torch.Tensor:
    """Llama-3 frequency scaling by hand (Meta's reference), for tiny-llama: head_dim 16,
    theta 5e5, factor 8, low/high freq factor 1/4, original context 64. Pair 0 (wavelength 6.3)
    stays, pair 1 (wavelength 32.4) is interpolated, pairs 2..7 are divided by 8."""
    dim, theta, factor, lo, hi, ctx = 16, 500000.0, 8.0, 1.0, 4.0, 64
    out = []
    for i in range(0, dim, 2):
        f = 1.0 / theta ** (i / dim)
        wavelen = 2 * math.pi / f
        if wavelen < ctx / hi:
            out.append(f)
        elif wavelen > ctx / lo:
            out.append(f / factor)
        else:
            smooth = (ctx / wavelen - lo) / (hi - lo)
            out.append((1 - smooth) * f / factor + smooth * f)
    return torch.tensor(out, dtype=torch.float32)


def load(d: Path):
    m = AutoModelForCausalLM.from_pretrained(str(d), attn_implementation="eager", dtype=torch.float32)
    m.eval()
    return m


# ---------------------------------------------------------------------------------------------
# c) parity data
# ---------------------------------------------------------------------------------------------

T = 12
N_PAD = 3
N_NEW = 8


def parity_inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(len(SPECIALS), VOCAB_SIZE, (2, T), generator=g)
    ids[:, 0] = 0  # <s>
    mask = torch.ones(2, T, dtype=torch.int64)
    ids[1, T - N_PAD :] = 2  # right padding with <pad>
    mask[1, T - N_PAD :] = 0
    return ids, mask


def parity(model, seed: int) -> dict:
    ids, mask = parity_inputs(seed)
    labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
    logits = out.logits.float()
    # Independent check of transformers' loss: mean NLL over shifted, unmasked labels.
    sl = labels[:, 1:]
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB_SIZE), sl.reshape(-1), ignore_index=-100)
    check(torch.allclose(nll, out.loss, rtol=1e-6, atol=0), "loss definition")
    # Logits must be far from uniform (mean per-position std).
    check(logits.std(-1).mean().item() > 1.5, f"logits too flat: {logits.std(-1).mean().item()}")

    prompt = ids[:1]
    gen = model.generate(
        input_ids=prompt,
        attention_mask=torch.ones_like(prompt),
        do_sample=False,
        max_new_tokens=N_NEW,
        min_new_tokens=N_NEW,
        eos_token_id=None,
        pad_token_id=2,
    )
    check(gen.shape == (1, T + N_NEW), f"generated shape {tuple(gen.shape)}")
    # Greedy with KV cache == argmax of the full uncached forward at every step.
    with torch.no_grad():
        full = model(input_ids=gen[:, :-1]).logits
    check(torch.equal(full[0, T - 1 :].argmax(-1), gen[0, T:]), "greedy == uncached argmax")
    return {
        "input_ids": ids.contiguous(),
        "attention_mask": mask.contiguous(),
        "logits": logits.contiguous(),
        "loss": out.loss.detach().float().reshape(()).contiguous(),
        "greedy_ids": gen.contiguous(),
    }


def make_model(name: str, cfg, seed: int, gemma: bool, tok: Tokenizer, chat: bool) -> tuple[Path, dict]:
    d = FIX / "models" / name
    if d.exists():
        shutil.rmtree(d)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    randomize(model, seed, gemma)
    model.eval()
    model.save_pretrained(str(d))
    write_tokenizer_files(tok, d, with_chat_template=chat)
    ref = parity(model, seed + 1)
    reloaded = load(d)
    again = parity(reloaded, seed + 1)
    check(torch.equal(ref["logits"], again["logits"]), f"{name}: reload gives identical logits")
    check(torch.equal(ref["greedy_ids"], again["greedy_ids"]), f"{name}: reload gives same greedy ids")
    return d, ref


# ---------------------------------------------------------------------------------------------
# e) SFT trajectory
# ---------------------------------------------------------------------------------------------

SFT = dict(
    template="raw",
    micro_batch_size=2,
    grad_accum=2,
    epochs=3,
    shuffle=False,
    lr=1e-3,
    betas=[0.9, 0.95],
    eps=1e-8,
    weight_decay=0.01,
    no_decay="tensors with ndim < 2 (norm weights, biases)",
    schedule="linear",
    warmup_ratio=0.2,
    clip=1.0,
    dtype="float32",
    attn_implementation="eager",
)


def sft_encode(hf_tok, rec: dict, eos_id: int) -> tuple[list[int], list[int]]:
    p = hf_tok(rec["prompt"], add_special_tokens=True)["input_ids"]
    r = hf_tok(rec["response"], add_special_tokens=False)["input_ids"]
    return p + r + [eos_id], [-100] * len(p) + r + [eos_id]


def collate(batch, pad_id: int):
    L = max(len(i) for i, _ in batch)
    ids = torch.full((len(batch), L), pad_id, dtype=torch.int64)
    lab = torch.full((len(batch), L), -100, dtype=torch.int64)
    mask = torch.zeros((len(batch), L), dtype=torch.int64)
    for b, (i, l) in enumerate(batch):
        ids[b, : len(i)] = torch.tensor(i)
        lab[b, : len(l)] = torch.tensor(l)
        mask[b, : len(i)] = 1
    return ids, mask, lab


def nll_sum(model, ids, mask, lab) -> tuple[torch.Tensor, int]:
    logits = model(input_ids=ids, attention_mask=mask).logits
    tgt = lab[:, 1:]
    s = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), tgt.reshape(-1), ignore_index=-100, reduction="sum"
    )
    return s, int((tgt != -100).sum())


def sft(model_dir: Path) -> None:
    out = FIX / "sft"
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "data.jsonl", "w", encoding="utf-8") as f:
        for r in SFT_RECORDS:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    hf_tok = AutoTokenizer.from_pretrained(str(model_dir))
    eos_id, pad_id = hf_tok.eos_token_id, hf_tok.pad_token_id
    enc = [sft_encode(hf_tok, r, eos_id) for r in SFT_RECORDS]

    model = load(model_dir)

    # Eval under the initial weights: one record at a time (no padding).
    with torch.no_grad():
        tot, cnt = 0.0, 0
        for i, l in enc:
            s, c = nll_sum(model, *collate([(i, l)], pad_id))
            tot += s.double().item()
            cnt += c
    eval_mean_nll = tot / cnt
    # Same number from a padded batch of all 8: padding must not change it.
    with torch.no_grad():
        s, c = nll_sum(model, *collate(enc, pad_id))
    check(c == cnt and abs(s.item() / c - eval_mean_nll) < 1e-5, "padded eval == unpadded eval")

    model.train()  # no dropout in these models; train() only for form
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": SFT["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=SFT["lr"],
        betas=tuple(SFT["betas"]),
        eps=SFT["eps"],
        foreach=False,
        fused=False,
    )
    per_step = SFT["micro_batch_size"] * SFT["grad_accum"]
    steps_per_epoch = len(enc) // per_step
    total = steps_per_epoch * SFT["epochs"]
    warmup = math.ceil(SFT["warmup_ratio"] * total)
    sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=warmup, num_training_steps=total)

    log = []
    step = 0
    for _epoch in range(SFT["epochs"]):
        for s0 in range(0, len(enc), per_step):
            step += 1
            micro = [
                collate(enc[m : m + SFT["micro_batch_size"]], pad_id)
                for m in range(s0, s0 + per_step, SFT["micro_batch_size"])
            ]
            step_count = sum(int((lab[:, 1:] != -100).sum()) for _, _, lab in micro)
            opt.zero_grad(set_to_none=True)
            step_nll = 0.0
            for ids, mask, lab in micro:
                s, _ = nll_sum(model, ids, mask, lab)
                (s / step_count).backward()
                step_nll += s.double().item()
            gn = torch.nn.utils.clip_grad_norm_(model.parameters(), SFT["clip"])
            lr = opt.param_groups[0]["lr"]
            opt.step()
            sched.step()
            log.append(
                {
                    "step": step,
                    "loss": step_nll / step_count,
                    "lr": lr,
                    "grad_norm": gn.item(),
                    "tokens": step_count,
                }
            )
            print(f"  sft step {step}: loss {log[-1]['loss']:.6f} lr {lr:.2e} grad_norm {gn.item():.4f}")

    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        shutil.copy(Path(tmp) / "model.safetensors", out / "final.safetensors")
    final = load_file(str(out / "final.safetensors"))
    sd = model.state_dict()
    check(set(final) == set(sd), "final.safetensors has every state_dict tensor")
    check(all(torch.equal(final[k], sd[k]) for k in final), "final.safetensors equals trained weights")

    write_json(
        out / "trajectory.json",
        {
            "model": "tests/fixtures/models/tiny-llama",
            "data": "tests/fixtures/sft/data.jsonl",
            "hyper_parameters": {
                **SFT,
                "optimizer_steps": total,
                "warmup_steps": warmup,
                "bos_id": hf_tok.bos_token_id,
                "eos_id": eos_id,
                "pad_id": pad_id,
            },
            "records": [{"input_ids": i, "labels": l} for i, l in enc],
            "eval_mean_nll": eval_mean_nll,
            "eval_tokens": cnt,
            "steps": log,
        },
    )


# ---------------------------------------------------------------------------------------------


def main() -> None:
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    FIX.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    write_tokenizer_files(tok, FIX, with_chat_template=False)

    specs = [
        ("tiny-llama", llama_config(), 1000, False, False),
        ("tiny-qwen2", qwen2_config(), 2000, False, True),
        ("tiny-gemma", gemma_config(), 3000, True, False),
    ]
    (FIX / "parity").mkdir(parents=True, exist_ok=True)
    dirs = {}
    for name, cfg, seed, gemma, chat in specs:
        d, ref = make_model(name, cfg, seed, gemma, tok, chat)
        if name == "tiny-llama":
            old_dialect(d / "config.json")
            old_model = load(d)
            old = parity(old_model, seed + 1)
            check(torch.equal(old["logits"], ref["logits"]), "old-dialect config loads to same logits")
            inv = old_model.model.rotary_emb.inv_freq
            check(torch.allclose(inv, llama3_inv_freq(), rtol=1e-6), f"llama3 rope applied: {inv.tolist()}")
        save_file(ref, str(FIX / "parity" / f"{name}.safetensors"))
        dirs[name] = d
        print(f"{name}: loss {ref['loss'].item():.6f}, greedy {ref['greedy_ids'].tolist()}")

    write_json(FIX / "tokenizer_cases.json", tokenizer_cases(tok, dirs["tiny-qwen2"]))
    sft(dirs["tiny-llama"])
    print("all checks passed")


if __name__ == "__main__":
    main()
