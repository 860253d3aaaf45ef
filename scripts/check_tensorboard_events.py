#!/usr/bin/env python3
"""Read elastica's TensorBoard event files with TensorBoard's own reader and compare them with
the run's train_log.jsonl (and rates.jsonl, when rates were tracked).

Not part of the test suite (tests never need Python); run it once after changing
src/report/tensorboard.rs:

    python3 -m venv v && v/bin/pip install tensorboard
    elastica train ... --out RUN --log-dir LOGS [--track-rates NAME=F]
    v/bin/python scripts/check_tensorboard_events.py LOGS RUN

Exits non-zero if a value differs (beyond float32 rounding) or a step is missing.
"""
import json
import math
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def main(logs: str, run: str) -> int:
    acc = EventAccumulator(logs, size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    print("scalar tags:", ", ".join(sorted(tags)))
    got = {t: {e.step: e.value for e in acc.Scalars(t)} for t in tags}
    bad = 0

    def check(tag, step, want):
        nonlocal bad
        have = got.get(tag, {}).get(step)
        ok = have is not None and math.isclose(have, want, rel_tol=1e-6, abs_tol=1e-12)
        if not ok:
            bad += 1
            print(f"MISMATCH {tag} step {step}: event file {have}, jsonl {want}")

    log = [json.loads(l) for l in Path(run, "train_log.jsonl").read_text().splitlines() if l]
    for row in log:
        for tag, key in [("train/loss", "loss"), ("train/lr", "lr"), ("train/grad_norm", "grad_norm")]:
            check(tag, row["step"], row[key])
        tps = got.get("train/tokens_per_s", {}).get(row["step"])
        if tps is None or not tps > 0:
            bad += 1
            print(f"MISSING train/tokens_per_s at step {row['step']}")
    rates = Path(run, "rates.jsonl")
    n_rates = 0
    if rates.exists():
        for row in (json.loads(l) for l in rates.read_text().splitlines() if l):
            for unit in ["bits_per_token", "bits_per_byte", "normalized"]:
                check(f"rates/{row['set']}/{unit}", row["step"], row[unit])
                n_rates += 1
    print(f"{len(log)} steps, {n_rates} rate values checked; {bad} problem(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
