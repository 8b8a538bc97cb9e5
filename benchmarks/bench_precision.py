"""What bfloat16 costs or saves on this machine: one training step of the default run, float32 against bf16 autocast.

    python -m benchmarks.bench_precision [--batch_size 32] [--steps 3]

This is the measurement behind ``mixed_precision: auto`` (ddpm_pipeline/hardware.py): on a CPU with native bf16
(AVX512_BF16 or AMX) the bf16 step is faster; without it PyTorch falls back to slow reference kernels and the bf16
step is many times slower. Each precision runs ``--steps`` timed steps after one warm-up step, in this process, with
the default run's UNet, loss and fused AdamW (benchmarks/bench_train.py's builders). Prints a table and writes
benchmarks/results/bench_precision{tag}.json with the machine and what ``auto`` picks here.
"""

import argparse
import sys
import tempfile

from accelerate.state import AcceleratorState

from benchmarks.bench_train import build_ours
from benchmarks.common import device, machine, print_table, seconds_per_call, write_json
from ddpm_pipeline.flag_types import positive_int


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=positive_int, default=32, help="the default run's batch")
    parser.add_argument("--steps", type=positive_int, default=3)
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    from ddpm_pipeline.hardware import choose_precision

    dev = device()
    rows = []
    for precision in ("fp32", "bf16"):
        AcceleratorState._reset_state(True)  # one Accelerator per precision in this process
        with tempfile.TemporaryDirectory() as work_dir:
            _, step = build_ours(args.batch_size, precision, tune_allocator=True, compiled=False, work_dir=work_dir)
            seconds = seconds_per_call(step, args.steps, warmup=1)
        rows.append(
            {"precision": precision, "seconds_per_step": seconds, "images_per_second": args.batch_size / seconds}
        )
        print(rows[-1], file=sys.stderr)
    rows[1]["bf16_over_fp32_time"] = rows[1]["seconds_per_step"] / rows[0]["seconds_per_step"]
    auto = choose_precision("auto", dev)
    print(f"\nMachine: {machine()}\nauto picks: {auto.mixed_precision} ({auto.reason})\n")
    print_table(rows, ["precision", "seconds_per_step", "images_per_second", "bf16_over_fp32_time"])
    write_json(
        f"bench_precision{args.tag}",
        {
            "machine": machine(),
            "batch_size": args.batch_size,
            "steps": args.steps,
            "auto_picks": auto.mixed_precision,
            "auto_reason": auto.reason,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
