"""Warmup-stable-decay against cosine at equal budgets: which learning-rate schedule to rely on for long runs.

    python -m benchmarks.study_schedule --steps 1540,4620 [--flags '...'] [--tag _zen4]

Every run is `train_ddpm.py` (the product's own path) with the default config plus --flags. Cosine trains one run per
budget. WSD trains one run of the longest budget and branches a cooldown (20% of each shorter budget) from the
checkpoint of its constant phase at that point (`--cooldown_from`), which is what makes WSD an anytime schedule: one
long run gives a model at every budget for the price of the cooldowns. Each model is scored by our evaluator at the
default call and at the other guidance scales of --guidance (1,000 samples, held-out digits: the ceiling is the
real-vs-real floor printed beside FID). Trained runs are reused if their folders exist. Writes
benchmarks/results/study_schedule{tag}.json and prints a table.
"""

import argparse
import json
import math
import shlex
import sys
from pathlib import Path

from benchmarks.common import (
    ROOT,
    cooldown_start,
    machine,
    print_table,
    score_model,
    train_cooldown_branch,
    train_once,
    write_json,
)
from ddpm_pipeline.flag_types import positive_int

COOLDOWN_FRACTION = 0.2


def train_all(budgets: list[int], base: list[str], work: Path) -> dict[tuple[str, int], Path]:
    """Cosine: one run per budget. WSD: the longest run, with a checkpoint where each shorter budget's cooldown
    starts, and a cooldown branch from each."""
    runs = {}
    for steps in budgets:
        runs["cosine", steps] = train_once(work / f"cosine_{steps}", [*base, "--max_train_steps", str(steps)])
    longest = max(budgets)
    branch_points = {steps: cooldown_start(steps, COOLDOWN_FRACTION) for steps in budgets if steps != longest}
    every = math.gcd(*branch_points.values()) if branch_points else 0
    wsd = [*base, "--lr_scheduler", "wsd", "--lr_cooldown_fraction", str(COOLDOWN_FRACTION)]
    keep = ["--checkpointing_steps", str(every), "--checkpoints_total_limit", "1000"]
    runs["wsd", longest] = train_once(work / f"wsd_{longest}", [*wsd, "--max_train_steps", str(longest), *keep])
    for steps, start in branch_points.items():
        runs["wsd", steps] = train_cooldown_branch(
            runs["wsd", longest], steps, start, wsd, work / f"wsd_{steps}_from_{start}"
        )
    return runs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default="1540,4620", help="the budgets, in optimizer steps of the default batch")
    parser.add_argument("--flags", default="", help="train_ddpm.py flags every run adds")
    parser.add_argument("--guidance", default="2.5,1.5", help="guidance scales to score (the first: the default)")
    parser.add_argument("--num_samples", type=positive_int, default=1000)
    parser.add_argument("--work_dir", default=str(ROOT / "outputs" / "study_schedule"))
    parser.add_argument("--tag", default="", help="suffix for the JSON file name")
    args = parser.parse_args()
    budgets = sorted(int(s) for s in args.steps.split(","))
    runs = train_all(budgets, shlex.split(args.flags), Path(args.work_dir))
    rows = []
    for (schedule, steps), folder in sorted(runs.items(), key=lambda item: (item[0][1], item[0][0])):
        info = json.loads((folder / "run_info.json").read_text())
        for scale in (float(g) for g in args.guidance.split(",")):
            scores = score_model(folder, (10, scale, (0.4, 0.8)), args.num_samples)
            row = {"schedule": schedule, "steps": steps, "train_seconds": info["train_seconds"], "guidance": scale}
            rows.append({**row, **scores, "command": info["command"]})
            print(rows[-1], file=sys.stderr)
    print(f"\nMachine: {machine()}; 10 steps, guidance on [0.4 T, 0.8 T), {args.num_samples} samples\n")
    columns = ["schedule", "steps", "train_seconds", "guidance", "fid", "fid_real_floor", "fid_over_floor"]
    print_table(rows, columns + ["clear_rate", "digit_accuracy", "coverage", "memorization_median"])
    write_json(f"study_schedule{args.tag}", {"machine": machine(), "budgets": budgets, "flags": args.flags,
                                             "cooldown_fraction": COOLDOWN_FRACTION, "rows": rows})  # fmt: skip


if __name__ == "__main__":
    main()
