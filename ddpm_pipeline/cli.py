"""The `ddpm-mnist` command: evaluate, sample, trajectory, push."""

import argparse
import json
import sys
import time
from pathlib import Path

from .hardware import DTYPE_CHOICES


def _load_pipeline(model: str, dtype: str = "auto"):
    """The pipeline at ``model``, its UNet in ``dtype`` (auto: the fastest one this machine runs natively)."""
    from .hardware import prepare_for_sampling
    from .pipeline_ddpm_mnist import DDPMMnistPipeline

    return prepare_for_sampling(DDPMMnistPipeline.from_pretrained(model), dtype=dtype)


def _digits(text: str | None):
    if not text:
        return None
    try:
        digits = [int(d) for d in text.split(",") if d.strip()]
    except ValueError:
        raise SystemExit(f"error: --digits takes digits separated by commas, e.g. 0,1,7; got {text!r}") from None
    if not digits or any(not 0 <= d <= 9 for d in digits):
        raise SystemExit(f"error: --digits must list digits between 0 and 9, got {text!r}")
    return digits


def parse_guidance_interval(text: str) -> tuple[float, ...]:
    """--guidance_interval LOW,HIGH as floats; the pipeline checks that 0 <= LOW < HIGH <= 1."""
    try:
        return tuple(float(bound) for bound in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes two fractions LOW,HIGH, e.g. 0.6,1; got {text!r}") from None


def cmd_evaluate(args):
    from .evaluation import evaluate_pipeline

    pipe = _load_pipeline(args.model, args.dtype)
    started = time.perf_counter()
    result = evaluate_pipeline(
        pipe,
        num_samples=args.num_samples,
        num_inference_steps=args.num_inference_steps,
        scheduler=args.scheduler,
        guidance_scale=args.guidance_scale,
        guidance_interval=args.guidance_interval,
        seed=args.seed,
        nll_images=args.nll_images,
        nll_steps=args.nll_steps,
    )
    result["model"] = args.model
    result["wall_seconds"] = time.perf_counter() - started
    print(format_table(result))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


def format_table(result: dict) -> str:
    rows = []
    for key, value in result.items():
        if isinstance(value, dict):
            for sub, subvalue in value.items():
                rows.append((f"{key}.{sub}", subvalue))
        else:
            rows.append((key, value))
    width = max(len(k) for k, _ in rows)
    lines = [f"{'metric'.ljust(width)}  value", f"{'-' * width}  -----"]
    for key, value in rows:
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"{key.ljust(width)}  {text}")
    return "\n".join(lines)


def _sample(args, return_trajectory=False):
    """Load --model and draw --num_images samples of the --digits asked for, as numpy arrays."""
    import torch

    pipe = _load_pipeline(args.model, args.dtype)
    digits = _digits(args.digits)
    labels = [digits[i % len(digits)] for i in range(args.num_images)] if digits else None
    out = pipe(
        batch_size=args.num_images,
        class_labels=labels,
        guidance_scale=args.guidance_scale,
        guidance_interval=args.guidance_interval,
        num_inference_steps=args.num_inference_steps,
        generator=torch.Generator().manual_seed(args.seed),
        output_type="np",
        return_trajectory=return_trajectory,
    )
    return out, digits


def cmd_sample(args):
    from .visualization import make_grid

    out, digits = _sample(args)
    grid = make_grid(out.images, labels=out.class_labels if args.label or digits else None)
    grid.save(args.out)
    print(f"wrote {args.out} ({args.num_images} samples)")


def cmd_trajectory(args):
    from .visualization import make_trajectory_figure, save_trajectory_gif

    out, _ = _sample(args, return_trajectory=True)
    frames = None
    if args.frames:
        wanted = [int(s) for s in args.frames.split(",")]
        steps = out.trajectory_timesteps
        frames = [min(range(len(steps)), key=lambda i: abs(steps[i] - w)) for w in wanted]
    make_trajectory_figure(out.trajectory, out.trajectory_timesteps, frames).save(args.out)
    print(f"wrote {args.out}")
    if args.gif:
        count = save_trajectory_gif(out.trajectory, out.trajectory_timesteps, args.gif)
        print(f"wrote {args.gif} ({count} frames)")


def cmd_push(args):
    from .hub import HubError, push_output_dir

    try:
        url = push_output_dir(args.output_dir, args.hub_model_id, token=args.hub_token, private=args.hub_private_repo)
    except HubError as error:
        raise SystemExit(f"error: {error}") from None
    print(f"pushed {args.output_dir} to {url}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddpm-mnist", description="Sample, evaluate and share ddpm-mnist models.")
    commands = parser.add_subparsers(dest="command", required=True)
    defaults = argparse.ArgumentDefaultsHelpFormatter

    def sampling_flags(p, steps_default=50):
        p.add_argument("--model", required=True, help="a local pipeline folder or a Hub id")
        p.add_argument("--num_inference_steps", type=int, default=steps_default, help="respaced steps (T = full chain)")
        p.add_argument("--guidance_scale", type=float, default=2.0, help="classifier-free guidance weight")
        p.add_argument(
            "--guidance_interval",
            type=parse_guidance_interval,
            default=(0.0, 1.0),
            metavar="LOW,HIGH",
            help="guide only at timesteps t with LOW*T <= t < HIGH*T (fractions of the training chain T)",
        )
        p.add_argument("--seed", type=int, default=0)
        p.add_argument(
            "--dtype",
            choices=DTYPE_CHOICES,
            default="auto",
            help="the UNet's dtype; auto = bfloat16 where this machine runs it natively, else float32 "
            "(ddpm_pipeline/hardware.py)",
        )

    evaluate = commands.add_parser(
        "evaluate",
        help="score samples: FID, clear rate, accuracy, coverage, NLL, memorization",
        formatter_class=defaults,
    )
    sampling_flags(evaluate)
    evaluate.add_argument("--num_samples", type=int, default=1000)
    evaluate.add_argument("--scheduler", choices=["ddpm", "ddim", "dpm"], default="ddpm")
    evaluate.add_argument("--nll_images", type=int, default=200, help="held-out images for the NLL bound (0 = skip)")
    evaluate.add_argument("--nll_steps", type=int, default=50, help="chain length for the NLL bound")
    evaluate.add_argument("--out", default="evaluation.json")
    evaluate.set_defaults(handler=cmd_evaluate)

    sample = commands.add_parser("sample", help="a grid of samples", formatter_class=defaults)
    sampling_flags(sample)
    sample.add_argument("--num_images", type=int, default=36)
    sample.add_argument("--digits", help="digits to ask for, e.g. 0,1,7 (conditional models)")
    sample.add_argument("--label", action="store_true", help="caption each cell with its requested digit")
    sample.add_argument("--out", default="samples.png")
    sample.set_defaults(handler=cmd_sample)

    trajectory = commands.add_parser(
        "trajectory", help="samples from noise to digit, frames labelled by step", formatter_class=defaults
    )
    sampling_flags(trajectory)
    trajectory.add_argument("--num_images", type=int, default=4)
    trajectory.add_argument("--digits", help="digits to ask for, e.g. 3,8")
    trajectory.add_argument("--frames", help="steps to show, e.g. 1000,500,100,0 (default: about 10, denser late)")
    trajectory.add_argument("--out", default="trajectory.png")
    trajectory.add_argument("--gif", help="also write every frame as an animated GIF")
    trajectory.set_defaults(handler=cmd_trajectory)

    push = commands.add_parser("push", help="push a training output folder to the Hub", formatter_class=defaults)
    push.add_argument("output_dir")
    push.add_argument("--hub_model_id", required=True, help="namespace/name")
    push.add_argument("--hub_token", default=None, help="else HF_TOKEN or the `hf auth login` store")
    push.add_argument("--hub_private_repo", action="store_true")
    push.set_defaults(handler=cmd_push)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
