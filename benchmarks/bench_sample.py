"""Sampling speed and quality per sampler, step count and guidance: the sampler study, and the default call.

    python -m benchmarks.bench_sample [--model pretrained/ddpm-mnist] [--quality_samples 1000]
        [--schedulers ddpm,ddpm2,ddim,dpm] [--steps 10,6] [--guidance 2:0.3,0.8;1.5:0,1] [--default_call]

For each scheduler, step count and guidance (SCALE:LOW,HIGH: weight 2 on 0.3 T <= t < 0.8 T, say): seconds for 36
images (median of 3 timed calls after a warm-up), the UNet evaluations one call of 36 costs, and quality on
``--quality_samples`` samples (classifier FID against held-out digits at equal counts, clear rate, digit accuracy).
``ddpm`` is our learned-variance sampler, ``ddpm2`` the same with a second-order x_0 (sampling_order=2), ``ddim`` and
``dpm`` diffusers' DDIM and DPM-Solver++. ``--default_call`` adds the row of the model's saved default call, as
``pipe()`` and ``ddpm-mnist sample`` run it. The UNet runs in the dtype ``ddpm-mnist sample`` picks on this machine
(``--dtype``, default auto: bfloat16 where the CPU runs it natively, else float32 in channels-last), the scheduler in
float32. Writes benchmarks/results/bench_sample{tag}.json.
"""

import argparse
import statistics
import sys
import time

import torch

from benchmarks.common import device, machine, print_table, synchronize, write_rows
from ddpm_pipeline.constants import SCHEDULERS
from ddpm_pipeline.flag_types import non_negative_int, positive_int, step_counts

STEPS = (1000, 250, 50, 25, 10)


def parse_guidance(text: str) -> list[tuple[float, tuple[float, float]]]:
    """SCALE:LOW,HIGH;SCALE:LOW,HIGH;... e.g. 2:0.3,0.8;1.5:0,1"""
    settings = []
    for item in text.split(";"):
        scale, interval = item.split(":")
        low, high = (float(v) for v in interval.split(","))
        settings.append((float(scale), (low, high)))
    return settings


def unet_calls(pipe, steps, scale, interval) -> int:
    """UNet evaluations of batch 36 in one call: two on the steps guidance covers, one elsewhere."""
    pipe.scheduler.set_timesteps(steps)
    T = pipe.scheduler.config.num_train_timesteps
    guided = sum(interval[0] * T <= int(t) < interval[1] * T for t in pipe.scheduler.timesteps)
    return len(pipe.scheduler.timesteps) + (guided if scale != 1.0 and pipe.unet.config.num_class_embeds else 0)


def seconds_for_36(pipe, **settings) -> float:
    """Median seconds of 3 calls of 36 images after a warm-up."""
    return alternating_seconds_for_36({"pipe": pipe}, repeats=3, **settings)["pipe"]


def alternating_seconds_for_36(pipes: dict, repeats: int, **settings) -> dict:
    """Each pipeline's median seconds for 36 images over ``repeats`` calls after a warm-up, the pipelines' calls
    alternating, so a machine whose speed drifts slows them all alike and their ratio stays fair."""
    labels = [i % 10 for i in range(36)]
    for pipe in pipes.values():
        pipe(batch_size=36, class_labels=labels, output_type="pt", **settings)  # warm-up
    times = {name: [] for name in pipes}
    for repeat in range(repeats):
        for name, pipe in pipes.items():
            synchronize()
            started = time.perf_counter()
            pipe(batch_size=36, class_labels=labels, generator=torch.Generator().manual_seed(repeat), **settings)
            synchronize()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def measure(pipe, name, steps, scale, interval, args, reference) -> dict:
    from ddpm_pipeline.evaluation import generate, headline_figures, score_samples, with_scheduler
    from ddpm_pipeline.pipeline_ddpm_mnist import FULL_CHAIN

    sampler = with_scheduler(pipe, name)
    steps, scale, interval = sampler.resolve_sampling(steps, scale, interval)
    steps = sampler.scheduler.config.num_train_timesteps if steps == FULL_CHAIN else steps
    settings = {"num_inference_steps": steps, "guidance_scale": scale, "guidance_interval": interval}
    seconds = seconds_for_36(sampler, **settings)
    row = {
        "scheduler": name,
        "steps": steps,
        "guidance": f"{scale:g} on [{interval[0]:g}, {interval[1]:g})",
        "unet_calls": unet_calls(with_scheduler(pipe, "ddpm"), steps, scale, interval),
        "seconds_for_36": seconds,
    }
    if args.quality_samples and (steps < args.skip_long_quality or name in (None, "ddpm")):
        samples, requested = generate(
            sampler, args.quality_samples, steps, scale, args.seed, guidance_interval=interval
        )
        figures = headline_figures(score_samples(samples, reference, requested))
        row.update({k: figures[k] for k in ("fid", "fid_real_floor", "fid_over_floor", "clear_rate", "digit_accuracy")})
    print(row, file=sys.stderr)
    return row


def main():
    from ddpm_pipeline import DDPMMnistPipeline
    from ddpm_pipeline.evaluation import embedded_reference
    from ddpm_pipeline.hardware import DTYPE_CHOICES, prepare_for_sampling

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="pretrained/ddpm-mnist")
    parser.add_argument("--quality_samples", type=non_negative_int, default=1000, help="0 = time only")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto", help="auto = what ddpm-mnist sample uses")
    parser.add_argument("--steps", type=step_counts, default=list(STEPS), help="step counts, e.g. 10,6")
    parser.add_argument("--schedulers", default="ddpm", help=f"comma-separated, from {SCHEDULERS}")
    parser.add_argument(
        "--guidance", type=parse_guidance, default=None, help="SCALE:LOW,HIGH;... (default: the model's)"
    )
    parser.add_argument("--default_call", action="store_true", help="also the model's saved default call")
    parser.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of the quality samples (FID moves by 1-2 with it)"
    )
    parser.add_argument("--tag", default="", help="suffix for the JSON file name")
    parser.add_argument(
        "--skip_long_quality", type=positive_int, default=1000, help="quality at this many steps: ddpm only"
    )
    args = parser.parse_args()
    schedulers = [name.strip() for name in args.schedulers.split(",")]
    if any(name not in SCHEDULERS for name in schedulers):
        parser.error(f"--schedulers takes names from {SCHEDULERS}, got {args.schedulers!r}")

    pipe = prepare_for_sampling(DDPMMnistPipeline.from_pretrained(args.model), device(), args.dtype)
    dtype = str(pipe.unet.dtype).removeprefix("torch.")
    reference = embedded_reference() if args.quality_samples else None
    rows = []
    if args.default_call:
        rows.append(measure(pipe, None, None, None, None, args, reference))
        order = pipe.scheduler.config.get("sampling_order", 1)
        rows[-1]["scheduler"] = f"default call ({'ddpm2' if order == 2 else 'ddpm'})"
    guidance = args.guidance or [(None, None)]
    for steps in args.steps:
        for name in schedulers:
            for scale, interval in guidance:
                rows.append(measure(pipe, name, steps, scale, interval, args, reference))
    print(f"\nMachine: {machine()}; UNet dtype {dtype}; quality on {args.quality_samples} samples.\n")
    columns = ["scheduler", "steps", "guidance", "unet_calls", "seconds_for_36", "fid", "fid_real_floor"]
    print_table(rows, columns + ["clear_rate", "digit_accuracy"])
    write_rows(
        f"bench_sample{args.tag}",
        "benchmarks.bench_sample",
        rows,
        model=args.model,
        dtype=dtype,
        quality_samples=args.quality_samples,
        seed=args.seed,
    )


if __name__ == "__main__":
    main()
