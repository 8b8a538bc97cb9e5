"""Draw quality against training minutes from study_minutes JSON files (and a reference curve from
bench_time_to_quality, if given): one line per model, at the first guidance scale its study scored (solid; the
legend names it) and at the guidance the sweep's rule picks for each budget (dashed;
ddpm_pipeline.guidance_sweep.choose: readable, the asked-for digit, then the lowest FID).

    python -m benchmarks.plot_minutes benchmarks/results/study_minutes_zen4.json [--reference FILE] --out PNG
"""

import argparse
import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def curves(rows: list[dict]) -> dict[str, dict[str, list]]:
    """Per model: minutes, FID / floor and digit accuracy at the first guidance scored (and which) and at the one
    the guidance sweep's rule picks among those scored."""
    from ddpm_pipeline.guidance_sweep import choose

    by_model = defaultdict(lambda: defaultdict(list))
    for row in rows:
        by_model[row["model"]][row["minutes"]].append(row)
    lines = {}
    for model, budgets in by_model.items():
        line = defaultdict(list)
        for minutes in sorted(budgets):
            default, best = budgets[minutes][0], choose(budgets[minutes])
            line["minutes"].append(minutes)
            line["default_fid"].append(default["fid_over_floor"])
            line["default_accuracy"].append(default["digit_accuracy"])
            line["best_fid"].append(best["fid_over_floor"])
            line["best_accuracy"].append(best["digit_accuracy"])
            line["best_guidance"].append(best["guidance"])
            line["first_guidance"].append(default["guidance"])
        lines[model] = line
    return lines


def reference_line(path: Path) -> dict[str, list]:
    """bench_time_to_quality's reference curve: digit accuracy, and FID over its floor where the file records it."""
    data = json.loads(path.read_text())
    points = data["curves"].get("reference", [])
    line = {"minutes": [p["train_seconds"] / 60 for p in points], "accuracy": [p["digit_accuracy"] for p in points]}
    if points and all("fid_over_floor" in p for p in points):
        line["fid"] = [p["fid_over_floor"] for p in points]
    return line


def draw(lines: dict, reference: dict | None, ceiling: float | None, title: str, out: Path):
    figure, (fid_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    for model, line in lines.items():
        first = "/".join(sorted({f"{scale:g}" for scale in line["first_guidance"]}))
        (solid,) = fid_axis.plot(line["minutes"], line["default_fid"], "o-", label=f"{model}, guidance {first}")
        fid_axis.plot(
            line["minutes"], line["best_fid"], "s--", color=solid.get_color(), label=f"{model}, sweep's guidance"
        )
        accuracy_axis.plot(line["minutes"], line["default_accuracy"], "o-", color=solid.get_color(), label=model)
        accuracy_axis.plot(line["minutes"], line["best_accuracy"], "s--", color=solid.get_color())
    if reference and reference["minutes"]:
        accuracy_axis.plot(reference["minutes"], reference["accuracy"], "^:", color="gray", label="course UNet2DModel")
        if "fid" in reference:
            fid_axis.plot(reference["minutes"], reference["fid"], "^:", color="gray", label="course UNet2DModel")
    fid_axis.axhline(1.0, color="black", linewidth=0.8)
    fid_axis.set_yscale("log")  # the course reference sits 10-40x above the floor, our models within 3x of it
    if ceiling is not None:
        accuracy_axis.axhline(ceiling, color="black", linewidth=0.8, label=f"real held-out digits ({ceiling:.3f})")
    fid_axis.set(xlabel="training minutes", ylabel="FID / real-vs-real floor (1 = real digits)", title="distance")
    accuracy_axis.set(xlabel="training minutes", ylabel="digit accuracy", title="right digit, asked for")
    for axis in (fid_axis, accuracy_axis):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    print(f"wrote {out}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("studies", nargs="+", help="study_minutes JSON files")
    parser.add_argument("--reference", help="a bench_time_to_quality JSON with a reference curve")
    parser.add_argument("--out", default="benchmarks/results/quality_vs_minutes.png")
    parser.add_argument("--title", default="", help="what the runs were (recipe, data), before the machine")
    args = parser.parse_args()
    rows, machines = [], set()
    for path in args.studies:
        data = json.loads(Path(path).read_text())
        rows += data["rows"]
        machines.add(f"{data['machine'].get('cpu', '?')}, {data['machine'].get('cpu_capability', '?')}")
    reference = reference_line(Path(args.reference)) if args.reference else None
    ceiling = rows[0].get("real_digit_accuracy") if rows else None
    title = "; ".join([*([args.title] if args.title else []), *sorted(machines)])
    draw(curves(rows), reference, ceiling, title, Path(args.out))


if __name__ == "__main__":
    main()
