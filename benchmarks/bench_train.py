"""Training throughput: our default UNet against the diffusers-course UNet2DModel, same batch and data.

    python -m benchmarks.bench_train [--batch_size 128] [--steps 6] [--no_tune_allocator]

Each configuration runs in its own process (so peak memory is its own), doing full training steps. Ours is
train_ddpm.py's own step (`setup_run` + `optimizer_step`: the one objective, clipping, the divergence guard, AdamW,
the learning-rate schedule and EMA) on the embedded data; the reference is the course's step (noising, forward, MSE,
backward, AdamW). Prints a table and writes benchmarks/results/bench_train.json with the machine (CPU model,
PyTorch's CPU capability, native bf16 or not), images/s, achieved GFLOP/s, peak memory, page faults per step and the
ratio ours / reference. The share of the ceiling divides by the 3x3 convolution's rate in the row's own precision
(64 -> 64 channels at 14x14, batch 128, NCHW forward; bf16 or fp32) measured inside the same process,
between rounds of training steps, so that the machine's drift hits both alike. Like train_ddpm.py, every process keeps
freed memory (ddpm_pipeline/cpu_allocator.py) unless --no_tune_allocator.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile

import torch

from benchmarks.common import (
    ROOT,
    ceiling_for,
    ceiling_probe,
    ceilings,
    device,
    forward_flops,
    machine,
    native_bf16,
    print_table,
    reference_unet,
    seconds_per_call,
    write_json,
)
from ddpm_pipeline.flag_types import positive_int

STEPS_PER_ROUND = 4  # training steps between two measurements of the ceiling

CONFIGS = {
    # name: (model, precision, torch.compile)
    "ours bf16": ("ours", "bf16", False),
    "ours fp32": ("ours", "fp32", False),
    "reference fp32": ("reference", "fp32", False),
    "reference bf16": ("reference", "bf16", False),
}
COMPILED = {
    "ours bf16 compiled": ("ours", "bf16", True),
    "reference bf16 compiled": ("reference", "bf16", True),
}


def build_ours(batch_size: int, precision: str, tune_allocator: bool, compiled: bool, work_dir: str):
    """The training loop's own run for this batch and precision (``build_run``: data, UNet, AdamW, learning-rate
    schedule, EMA, batch plan), and one of its optimizer steps (``optimizer_step``: the one objective, clipping, the
    divergence guard, EMA) as the step to time."""
    from ddpm_pipeline.training.config_checks import parse_args
    from ddpm_pipeline.training.loop import build_run
    from ddpm_pipeline.training.step import optimizer_step

    flags = ["--train_batch_size", str(batch_size), "--mixed_precision", "bf16" if precision == "bf16" else "no"]
    flags += ["--keep_freed_memory", str(tune_allocator).lower(), "--output_dir", work_dir, "--logger", "none"]
    run = build_run(parse_args(flags))
    model = run.parts.accelerator.unwrap_model(run.parts.unet)
    if compiled:
        run.parts.unet = torch.compile(run.parts.unet)
    return model, lambda: optimizer_step(run)


def build_reference(batch_size: int, precision: str, compiled: bool, dev):
    """The diffusers course's step: noising, forward (autocast in bf16 rows), MSE, backward, plain AdamW."""
    from diffusers import DDPMScheduler

    torch.manual_seed(0)
    x0 = torch.rand(batch_size, 1, 28, 28, device=dev) * 2 - 1
    model, scheduler = reference_unet(), DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    optimizer = torch.optim.AdamW(model.to(dev).parameters(), lr=1e-4)
    network = torch.compile(model) if compiled else model

    def step():
        noise = torch.randn_like(x0)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(x0),), device=x0.device)
        noisy = scheduler.add_noise(x0, noise, t)
        with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            output = network(noisy, t).sample
        loss = torch.nn.functional.mse_loss(output.float(), noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return model, step


def time_in_rounds(step, probe, probe_flops, steps: int) -> tuple[float, float, float]:
    """(seconds of the steps, the median ceiling in GFLOP/s, page faults per step): rounds of steps, each after a
    probe of the ceiling, so that the machine's drift hits both alike."""
    step_seconds, ceiling_rates, done = 0.0, [], 0
    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    while done < steps:
        ceiling_rates.append(probe_flops / seconds_per_call(probe, 5) / 1e9)
        round_steps = min(STEPS_PER_ROUND, steps - done)
        step_seconds += seconds_per_call(step, round_steps, warmup=0) * round_steps
        done += round_steps
    # the probes' faults (if any) are counted with the steps': an upper bound on the steps' own
    faults_per_step = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before) / steps
    return step_seconds, sorted(ceiling_rates)[len(ceiling_rates) // 2], faults_per_step


def run_one(name: str, batch_size: int, steps: int, tune_allocator: bool) -> dict:
    from ddpm_pipeline.cpu_allocator import keep_freed_memory

    kind, precision, compiled = {**CONFIGS, **COMPILED}[name]
    dev = device()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as work_dir:
        if kind == "ours":
            allocator_tuned = dev.type == "cpu" and tune_allocator  # setup_run keeps freed memory, as a run does
            model, step = build_ours(batch_size, precision, allocator_tuned, compiled, work_dir)
        else:
            allocator_tuned = dev.type == "cpu" and tune_allocator and keep_freed_memory()
            model, step = build_reference(batch_size, precision, compiled, dev)
        return measure(name, model, step, batch_size, steps, allocator_tuned)


def measure(name: str, model, step, batch_size: int, steps: int, allocator_tuned: bool) -> dict:
    """Warm up, then time ``step`` in rounds between probes of the ceiling; one row of the table."""
    kind, precision, compiled = {**CONFIGS, **COMPILED}[name]
    dev = next(model.parameters()).device
    sample, timestep = torch.zeros(1, 1, 28, 28, device=dev), torch.tensor([5], device=dev)
    labels = [torch.tensor([3], device=dev)] if kind == "ours" else []
    flops = forward_flops(model, sample, timestep, *labels)
    probe, probe_flops = ceiling_probe(ceiling_for(precision))
    for _ in range(3 if compiled else 2):  # warm-up: compilation, autotuning and the allocator
        step()
    step_seconds, ceiling, faults_per_step = time_in_rounds(step, probe, probe_flops, steps)
    images_per_second = batch_size * steps / step_seconds
    peak_mb = (
        torch.cuda.max_memory_allocated() / 2**20
        if dev.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "config": name,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "gflop_per_image_fwd": flops / 1e9,
        "images_per_second": images_per_second,
        "train_gflops": 3 * flops * images_per_second / 1e9,  # forward + backward ~ 3x forward
        "ceiling": ceiling_for(precision),
        "ceiling_gflops": ceiling,
        "share_of_ceiling": 3 * flops * images_per_second / 1e9 / ceiling,
        "page_faults_per_step": faults_per_step,
        "allocator_tuned": allocator_tuned,
        "peak_memory_mb": peak_mb,
    }


def run_in_subprocess(name: str, args) -> dict:
    """One configuration in its own process, so that its peak memory and page faults are its own."""
    command = [sys.executable, "-m", "benchmarks.bench_train", "--single", name, "--batch_size", str(args.batch_size)]
    command += ["--steps", str(args.steps), *(["--no_tune_allocator"] if args.no_tune_allocator else [])]
    result = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
    row = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"{name}: {row['images_per_second']:.0f} images/s", file=sys.stderr)
    return row


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=positive_int, default=128)
    parser.add_argument("--steps", type=positive_int, default=6)
    parser.add_argument("--compile", action="store_true", help="also time both models under torch.compile (bf16)")
    parser.add_argument(
        "--configs",
        default=None,
        help=f"comma-separated, from: {', '.join([*CONFIGS, *COMPILED])} (default: all four where bf16 is native, "
        "else the float32 ones: bf16 on slow reference kernels takes minutes per step)",
    )
    parser.add_argument("--no_tune_allocator", action="store_true", help="leave glibc's allocator as it is")
    parser.add_argument("--tag", default="", help="suffix for the JSON file name")
    parser.add_argument("--single", help=argparse.SUPPRESS)
    args = parser.parse_args()
    chosen = args.configs or ",".join(CONFIGS if native_bf16() else [n for n in CONFIGS if n.endswith("fp32")])
    args.names = [name.strip() for name in chosen.split(",")] + (list(COMPILED) if args.compile else [])
    unknown = [name for name in args.names if name not in {**CONFIGS, **COMPILED}]
    if unknown and not args.single:
        parser.error(f"unknown config(s) {unknown}; choose from {[*CONFIGS, *COMPILED]}")
    return args


def main():
    args = parse_args()
    if args.single:
        print(json.dumps(run_one(args.single, args.batch_size, args.steps, not args.no_tune_allocator)))
        return
    limits = ceilings()
    rows = [run_in_subprocess(name, args) for name in args.names]
    reference = {r["config"]: r for r in rows}.get("reference fp32", {}).get("images_per_second")
    for row in rows:
        row["vs_reference_fp32"] = row["images_per_second"] / reference if reference else None
    print(f"\nMachine: {machine()}\nCeilings (GFLOP/s): " + ", ".join(f"{k} {v:.0f}" for k, v in limits.items()))
    print(
        f"Batch {args.batch_size}, {args.steps} timed steps after 2 (compiled: 3) warm-up steps, in rounds of "
        f"{STEPS_PER_ROUND} between probes of the ceiling (its median is the ceiling column); allocator "
        f"{'left as it is' if args.no_tune_allocator else 'keeping freed memory'}.\n"
    )
    columns = ["config", "params_m", "gflop_per_image_fwd", "images_per_second", "vs_reference_fp32", "train_gflops"]
    print_table(rows, columns + ["ceiling_gflops", "share_of_ceiling", "page_faults_per_step", "peak_memory_mb"])
    write_json(
        f"bench_train{args.tag}",
        {
            "machine": machine(),
            "ceilings_gflops": limits,
            "batch_size": args.batch_size,
            "steps": args.steps,
            "steps_per_ceiling_probe": STEPS_PER_ROUND,
            "allocator_tuned": not args.no_tune_allocator,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
