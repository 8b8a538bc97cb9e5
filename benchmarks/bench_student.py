"""Seconds for 36 images: the distilled student's default call against its teacher's, in the same run, in float32
and in the dtype this machine prefers.

    python -m benchmarks.bench_student [--teacher pretrained/ddpm-mnist] [--student outputs/ddpm-mnist-fast]
        [--repeats 7] [--tag T]

Each figure is the median of --repeats timed calls after a warm-up, the pipeline loaded with `from_pretrained` and
`prepare_for_sampling` as `ddpm-mnist sample` loads it. Teacher and student calls alternate, so a virtual machine whose
speed drifts between seconds slows both alike and the ratio stays fair. Hold the kernels to AVX2 on a wider CPU with
ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 (the machine record says so). Writes
benchmarks/results/bench_student{tag}.json.
"""

import argparse

from benchmarks.bench_sample import alternating_seconds_for_36
from benchmarks.common import device, machine, print_table, write_rows
from ddpm_pipeline.flag_types import positive_int


def main():
    from ddpm_pipeline import DDPMMnistPipeline
    from ddpm_pipeline.hardware import preferred_dtype, prepare_for_sampling

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="pretrained/ddpm-mnist")
    parser.add_argument("--student", default="outputs/ddpm-mnist-fast")
    parser.add_argument("--repeats", type=positive_int, default=7)
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    preferred = str(preferred_dtype(device())).removeprefix("torch.")
    dtypes = ["float32"] if preferred == "float32" else ["float32", preferred]
    rows = []
    for dtype in dtypes:
        pipes = {}
        for name, model in (("teacher", args.teacher), ("student", args.student)):
            pipes[name] = prepare_for_sampling(DDPMMnistPipeline.from_pretrained(model), device(), dtype)
            pipes[name].set_progress_bar_config(disable=True)
        seconds = alternating_seconds_for_36(pipes, args.repeats)
        for name, pipe in pipes.items():
            steps, scale, interval = pipe.resolve_sampling()
            rows.append({"model": name, "dtype": dtype, "default_call": f"{steps} steps, guidance {scale:g}",
                         "seconds_for_36": seconds[name]})  # fmt: skip
        rows[-1]["speedup"] = seconds["teacher"] / seconds["student"]
    print(f"\nMachine: {machine()}\n")
    print_table(rows, ["model", "dtype", "default_call", "seconds_for_36", "speedup"])
    write_rows(
        f"bench_student{args.tag}",
        "benchmarks.bench_student",
        rows,
        teacher=args.teacher,
        student=args.student,
        repeats=args.repeats,
    )


if __name__ == "__main__":
    main()
