"""Sampling speed and quality against the number of steps, for our scheduler, DDIM and DPM-Solver++.

    python benchmarks/bench_sample.py [--model pretrained/ddpm-mnist] [--quality_samples 200] [--steps 1000,50,10]
        [--schedulers ddpm,ddim,dpm]

For each scheduler and step count: seconds for 36 images (after a warm-up), images/s, and quality on
``--quality_samples`` samples (classifier FID against held-out digits at equal counts, clear rate, digit accuracy).
The UNet runs in the dtype ``ddpm-mnist sample`` picks on this machine (``--dtype``, default auto: bfloat16 where the
CPU runs it natively, else float32 in channels-last), the scheduler in float32.
Writes benchmarks/results/bench_sample.json.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import device, machine, print_table, synchronize, write_json  # noqa: E402

STEPS = (1000, 250, 50, 25, 10)
SCHEDULERS = ("ddpm", "ddim", "dpm")


def main():
    from ddpm_pipeline import DDPMMnistPipeline
    from ddpm_pipeline.cli import parse_guidance_interval
    from ddpm_pipeline.evaluation import embedded_reference, generate, score_samples, with_scheduler
    from ddpm_pipeline.hardware import DTYPE_CHOICES, prepare_for_sampling

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="pretrained/ddpm-mnist")
    parser.add_argument("--quality_samples", type=int, default=200)
    parser.add_argument(
        "--dtype", choices=DTYPE_CHOICES, default="auto", help="the UNet's; auto = what ddpm-mnist sample uses here"
    )
    parser.add_argument("--steps", default=",".join(map(str, STEPS)))
    parser.add_argument("--schedulers", default=",".join(SCHEDULERS), help=f"comma-separated, from {SCHEDULERS}")
    parser.add_argument("--guidance_scale", type=float, default=2.0)
    parser.add_argument(
        "--guidance_interval",
        type=parse_guidance_interval,
        default=(0.0, 1.0),
        help="LOW,HIGH: guide only where LOW*T <= t < HIGH*T (default: every step)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the quality samples (FID moves by 1-2 with it)")
    parser.add_argument("--tag", default="", help="suffix for the JSON file name")
    parser.add_argument(
        "--skip_long_quality",
        type=int,
        default=1000,
        help="measure quality at this many steps or more only for our scheduler (it is slow)",
    )
    args = parser.parse_args()
    interval = args.guidance_interval
    schedulers = [name.strip() for name in args.schedulers.split(",")]
    if any(name not in SCHEDULERS for name in schedulers):
        parser.error(f"--schedulers takes names from {SCHEDULERS}, got {args.schedulers!r}")

    pipe = prepare_for_sampling(DDPMMnistPipeline.from_pretrained(args.model), device(), args.dtype)
    dtype = str(pipe.unet.dtype).removeprefix("torch.")
    reference = embedded_reference()
    rows = []
    for steps in [int(s) for s in args.steps.split(",")]:
        for name in schedulers:
            sampler = with_scheduler(pipe, name)
            labels = [i % 10 for i in range(36)]
            sampler(
                batch_size=36,
                class_labels=labels,
                num_inference_steps=min(steps, 5),
                guidance_scale=args.guidance_scale,
                guidance_interval=interval,
            )
            synchronize()
            started = time.perf_counter()
            sampler(
                batch_size=36,
                class_labels=labels,
                num_inference_steps=steps,
                guidance_scale=args.guidance_scale,
                guidance_interval=interval,
                generator=torch.Generator().manual_seed(0),
                output_type="pt",
            )
            synchronize()
            seconds = time.perf_counter() - started
            row = {"scheduler": name, "steps": steps, "seconds_for_36": seconds, "images_per_second": 36 / seconds}
            if args.quality_samples and (steps < args.skip_long_quality or name == "ddpm"):
                samples, requested = generate(
                    sampler,
                    args.quality_samples,
                    steps,
                    args.guidance_scale,
                    seed=args.seed,
                    guidance_interval=interval,
                )
                quality = score_samples(samples, reference, requested)
                row.update({k: quality[k] for k in ("fid", "fid_real_floor", "clear_rate", "digit_accuracy")})
            rows.append(row)
            print(f"{name} {steps} steps: {seconds:.2f} s for 36", file=sys.stderr)
    print(
        f"\nMachine: {machine()}; UNet dtype {dtype}; guidance {args.guidance_scale} on t/T in "
        f"[{interval[0]}, {interval[1]}); "
        f"quality on {args.quality_samples} samples vs as many held-out digits.\n"
    )
    print_table(
        rows,
        [
            "scheduler",
            "steps",
            "seconds_for_36",
            "images_per_second",
            "fid",
            "fid_real_floor",
            "clear_rate",
            "digit_accuracy",
        ],
    )
    write_json(
        f"bench_sample{args.tag}",
        {
            "machine": machine(),
            "model": args.model,
            "dtype": dtype,
            "quality_samples": args.quality_samples,
            "seed": args.seed,
            "guidance_scale": args.guidance_scale,
            "guidance_interval": list(interval),
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
