"""The training-recipe study: train variants of the default run on the same budget, and score each the same way.

    python -m benchmarks.study_recipe --variants baseline,min_snr_5 --max_train_steps 480 [--tag _avx2]

Each variant is `train_ddpm.py` with the default config plus the variant's flags (VARIANTS below), trained to the same
number of images seen (``--max_train_steps`` at batch 128; a variant with another batch size gets the steps that keep
the images equal) and so, for the same UNet, in the same training time. Then every pipeline is scored by our
evaluator at the largest count our held-out digits allow (FID at 500 per side, clear rate and digit accuracy on
``--num_samples``), sampled with one fixed setting (``--sampling``). Variants with weight snapshots are also scored
as post-hoc EMAs (``--sigma_rel``). A trained variant is reused if its folder exists. Writes
benchmarks/results/study_recipe{tag}.json and prints a table.
"""

import argparse
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

from benchmarks.common import ROOT, machine, print_table, score_model, write_rows
from ddpm_pipeline.flag_types import positive_int, positive_list

BASE_BATCH = 128
VARIANTS = {
    "baseline": [],
    "batch_64": ["--train_batch_size", "64"],
    "batch_32": ["--train_batch_size", "32"],
    "batch_16": ["--train_batch_size", "16"],
    "lr_4e-3": ["--learning_rate", "4e-3"],
    "lr_1e-3": ["--learning_rate", "1e-3"],
    "lr_constant": ["--lr_scheduler", "constant_with_warmup"],
    "min_snr_5": ["--snr_gamma", "5"],
    "v_prediction": ["--prediction_type", "v_prediction"],
    "v_prediction_lognormal": ["--prediction_type", "v_prediction", "--timestep_sampling", "lognormal"],
    "lognormal": ["--timestep_sampling", "lognormal"],
    "ema_short": ["--ema_max_decay", "0.999"],
    "ema_long": ["--ema_max_decay", "0.9999", "--ema_power", "0.6667"],
    # decay 1 - 1/(1 + step/18): a window growing as step/18, like Karras et al.'s power EMA with sigma_rel ~0.05
    "ema_power_function": ["--ema_power", "1", "--ema_inv_gamma", "18"],
    # the same online EMA, plus raw-weight snapshots: one run scores the online EMA and post-hoc widths
    "ema_power_function_snapshots": ["--ema_power", "1", "--ema_inv_gamma", "18", "--weight_snapshot_steps", "10"],
    "lr_3e-3": ["--learning_rate", "3e-3"],
    "dropout_0.1": ["--dropout", "0.1"],
    "width_96_at_14": ["--block_out_channels", "32,96,64"],
    "width_48_at_14": ["--block_out_channels", "32,48,64"],
    "snapshots": ["--weight_snapshot_steps", "10"],
}


def defaults_tag() -> str:
    """A short hash of the default config: the same flags on other defaults are another run."""
    from ddpm_pipeline.config_sources import defaults_yaml

    return hashlib.sha256(defaults_yaml().encode()).hexdigest()[:8]


def train_variant(name: str, flags: list[str], steps: int, work_dir: Path) -> Path:
    """Train (or reuse) the run of these flags on today's defaults; its folder is named by both (the defaults by a
    hash), so a reused run is the same run."""
    slug = re.sub(r"[^A-Za-z0-9.]+", "_", " ".join(flags)).strip("_") or "baseline"
    out = work_dir / f"defaults_{defaults_tag()}" / slug / str(steps)
    if (out / "run_info.json").is_file():
        print(f"{name}: reusing {out}", file=sys.stderr)
        return out
    from ddpm_pipeline.training_config import TrainingConfig

    batch = TrainingConfig().train_batch_size  # the default run's, unless a flag sets it
    for i, flag in enumerate(flags):  # the last --train_batch_size wins, as on the command line
        if flag == "--train_batch_size":
            batch = int(flags[i + 1])
    command = [
        sys.executable,
        str(ROOT / "train_ddpm.py"),
        "--output_dir",
        str(out),
        "--max_train_steps",
        str(steps * BASE_BATCH // batch),
        "--checkpointing_steps",
        "0",
        "--save_images_epochs",
        "0",
        *flags,
    ]
    print(f"{name}: {' '.join(command[1:])}", file=sys.stderr)
    subprocess.run(command, check=True, cwd=ROOT)
    return out


def parse_sampling(text: str) -> tuple:
    """STEPS:SCALE:LOW,HIGH, e.g. 10:2:0.3,0.8."""
    steps, scale, interval = text.split(":")
    low, high = (float(v) for v in interval.split(","))
    return int(steps), float(scale), (low, high)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="baseline", help=f"comma-separated, from: {', '.join(VARIANTS)}")
    parser.add_argument(
        "--base", default="", help="flags every variant adds first (the running winner), e.g. '--train_batch_size 64'"
    )
    parser.add_argument(
        "--max_train_steps", type=positive_int, default=480, help="steps at batch 128 (images seen / 128)"
    )
    parser.add_argument("--sampling", type=parse_sampling, default=(10, 2.0, (0.3, 0.8)), help="STEPS:SCALE:LOW,HIGH")
    parser.add_argument("--num_samples", type=positive_int, default=1000)
    parser.add_argument(
        "--sigma_rel", type=positive_list, default=[0.05, 0.1, 0.15], help="post-hoc EMA widths for snapshot variants"
    )
    parser.add_argument("--work_dir", default=str(ROOT / "outputs" / "study"))
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    names = [n.strip() for n in args.variants.split(",")]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    rows = []
    base_flags = args.base.split()
    for name in names:
        flags = base_flags + VARIANTS[name]
        out = train_variant(name, flags, args.max_train_steps, Path(args.work_dir))
        info = json.loads((out / "run_info.json").read_text())
        base = {"variant": name, "flags": " ".join(flags), "steps": info["global_step"]}
        base["train_seconds"] = info["train_seconds"]
        rows.append({**base, "ema": "online", **score_model(out, args.sampling, args.num_samples)})
        print(rows[-1], file=sys.stderr)
        if "--weight_snapshot_steps" in flags:
            rows += posthoc_rows(out, base, args)
        save(rows, args)  # after every variant: a long study keeps what it measured
    print(f"\nMachine: {machine()}\nSampling {args.sampling}, {args.num_samples} samples; FID at 500 per side.\n")
    columns = ["variant", "ema", "steps", "train_seconds", "fid", "fid_real_floor", "clear_rate", "digit_accuracy"]
    print_table(rows, columns + ["coverage", "memorization_median"])


def save(rows: list[dict], args):
    write_rows(
        f"study_recipe{args.tag}",
        "benchmarks.study_recipe",
        rows,
        base_flags=args.base,
        defaults_sha256_8=defaults_tag(),
        images_seen=args.max_train_steps * BASE_BATCH,
        sampling={"steps": args.sampling[0], "guidance": args.sampling[1], "interval": args.sampling[2]},
        num_samples=args.num_samples,
    )


def posthoc_rows(out: Path, base: dict, args) -> list[dict]:
    from ddpm_pipeline.posthoc_ema import main as posthoc

    rows = []
    for sigma_rel in args.sigma_rel:
        target = out.parent / f"{out.name}_posthoc_{sigma_rel}"
        if not (target / "model_index.json").is_file():
            posthoc([str(out), "--sigma_rel", str(sigma_rel), "--out", str(target)])
        rows.append(
            {**base, "ema": f"post-hoc sigma_rel {sigma_rel}", **score_model(target, args.sampling, args.num_samples)}
        )
        print(rows[-1], file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()
