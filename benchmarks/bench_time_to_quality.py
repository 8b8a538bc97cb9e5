"""Time to quality: train ours and the diffusers-course reference for the same wall-clock budget on the same data,
and evaluate both at fixed training times.

    python benchmarks/bench_time_to_quality.py [--budget_minutes 8] [--eval_every_minutes 2] [--eval_samples 100]
        [--models ours,reference] [--no_tune_allocator]

Both are class-conditional (null class dropped 10% of the time) and keep an EMA. Ours is the default run of
train_ddpm.py: its batch size, learning rate, EMA, loss and the precision its auto picks (bf16 where the CPU runs it
natively, else float32), sampled with the default call its pipeline is saved with. The reference is the course's:
UNet2DModel (32, 64, 64), DDPMScheduler cosine, MSE, fp32, batch 128, lr 1e-3, EMA warmup power 0.75, sampled by
DDIM on 25 steps with guidance 2. The clock counts training only; evaluation pauses it. On a CPU the process keeps
freed memory, as train_ddpm.py does, for both (ddpm_pipeline/cpu_allocator.py; --no_tune_allocator leaves glibc as
it is). Writes benchmarks/results/bench_time_to_quality{tag}.json.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import device, machine, print_table, reference_unet, synchronize, write_json  # noqa: E402

BAR = 0.95


def load_digits():
    from ddpm_pipeline.data import load_embedded_mnist, scale_to_model_range, to_training_tensors

    images, labels = to_training_tensors(load_embedded_mnist()["train"])
    return scale_to_model_range(images), labels


class Contender:
    """A model, its scheduler, its training step and its sampler."""

    def __init__(self, kind: str):
        from diffusers import DDIMScheduler, DDPMScheduler
        from diffusers.training_utils import EMAModel

        from ddpm_pipeline.hardware import choose_precision
        from ddpm_pipeline.training_config import TrainingConfig
        from ddpm_pipeline.training_setup import build_ema, build_models, build_optimizer

        self.kind = kind
        torch.manual_seed(0)
        config = TrainingConfig()  # the default run
        if kind == "ours":
            self.model, self.scheduler = build_models(config, num_classes=10)
            self.null_class = 10
        else:
            self.model = reference_unet(num_class_embeds=11)  # 10 digits + the null class
            self.scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
            self.sampler = DDIMScheduler.from_config(self.scheduler.config)
            self.null_class = 10
        self.device = device()
        self.model = self.model.to(self.device)
        if kind == "ours":  # the default run's fused AdamW, EMA and batch; the course's plain ones
            self.optimizer = build_optimizer(config, self.model.parameters(), self.device)
            self.ema = build_ema(config, self.model)
            self.batch, self.lr, self.config = config.train_batch_size, config.learning_rate, config
        else:
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
            self.ema = EMAModel(self.model.parameters(), decay=0.9995, use_ema_warmup=True, power=0.75)
            self.batch, self.lr = 128, 1e-3
        self.warmup, self.steps = 100, 0
        # ours trains at the precision train_ddpm.py's default (auto) picks here; the reference in fp32, as the course
        self.precision = choose_precision("auto", self.device) if kind == "ours" else choose_precision("no")

    def train_step(self, x0, labels, generator):
        from ddpm_pipeline.losses import diffusion_loss

        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * min(1.0, (self.steps + 1) / self.warmup)
        # random draws on the CPU generator, so that both devices see the same numbers
        noise = torch.randn(x0.shape, generator=generator).to(self.device)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(x0),), generator=generator)
        drop = torch.rand(len(x0), generator=generator) < 0.1
        labels = torch.where(drop, torch.full_like(labels, self.null_class), labels).to(self.device)
        x0, t = x0.to(self.device), t.to(self.device)
        noisy = self.scheduler.add_noise(x0, noise, t)
        if self.kind == "ours":
            with torch.autocast(
                self.device.type, dtype=self.precision.dtype, enabled=self.precision.dtype != torch.float32
            ):
                output = self.model(noisy, t, labels).sample
            loss = diffusion_loss(output, self.scheduler, x0, noise, noisy, t).loss
        else:
            loss = torch.nn.functional.mse_loss(self.model(noisy, t, class_labels=labels).sample, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.step(self.model.parameters())
        self.steps += 1

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, steps: int = 25, guidance: float = 2.0) -> torch.Tensor:
        import copy

        from ddpm_pipeline import DDPMMnistPipeline
        from ddpm_pipeline.hardware import prepare_for_sampling

        model = copy.deepcopy(self.model)
        self.ema.copy_to(model.parameters())
        model.eval()
        if self.kind == "ours":
            defaults = self.config.sampling_defaults()  # the default call a saved run would carry
            pipe = DDPMMnistPipeline(unet=model, scheduler=self.scheduler, **defaults)
            pipe = prepare_for_sampling(pipe, self.device)
            pipe.set_progress_bar_config(disable=True)
            out = pipe(
                batch_size=len(labels),
                class_labels=labels,
                generator=torch.Generator().manual_seed(0),
                output_type="pt",
            )
            return out.images.cpu() * 2 - 1
        self.sampler.set_timesteps(steps, device=self.device)
        x = torch.randn((len(labels), 1, 28, 28), generator=torch.Generator().manual_seed(0)).to(self.device)
        labels = labels.to(self.device)
        null = torch.full_like(labels, self.null_class)
        for t in self.sampler.timesteps:
            both = model(torch.cat([x, x]), t, class_labels=torch.cat([labels, null])).sample
            conditional, unconditional = both.chunk(2)
            x = self.sampler.step(unconditional + guidance * (conditional - unconditional), t, x).prev_sample
        return x.clamp(-1, 1).cpu()


def run(kind, images, labels, budget_s, eval_every_s, eval_samples, reference_data):
    from ddpm_pipeline.evaluation import score_samples

    contender = Contender(kind)
    generator = torch.Generator().manual_seed(0)
    batch, clock, next_eval, curve = contender.batch, 0.0, eval_every_s, []
    requested = torch.arange(eval_samples) % 10
    while clock < budget_s:
        index = torch.randint(0, len(images), (batch,), generator=generator)
        started = time.perf_counter()
        contender.train_step(images[index], labels[index], generator)
        synchronize()
        clock += time.perf_counter() - started
        if clock >= next_eval or clock >= budget_s:
            samples = contender.sample(requested)
            scores = score_samples(samples, reference_data, requested)
            point = {
                "model": kind,
                "train_seconds": clock,
                "steps": contender.steps,
                "images_seen": contender.steps * batch,
                "clear_rate": scores["clear_rate"],
                "digit_accuracy": scores["digit_accuracy"],
                "fid": scores["fid"],
            }
            curve.append(point)
            print(point, file=sys.stderr)
            next_eval += eval_every_s
    return curve


def main():
    from ddpm_pipeline.evaluation import embedded_reference

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget_minutes", type=float, default=8)
    parser.add_argument("--eval_every_minutes", type=float, default=2)
    parser.add_argument("--eval_samples", type=int, default=100)
    parser.add_argument("--models", default="ours,reference", help="which to train, comma-separated")
    parser.add_argument(
        "--no_tune_allocator", action="store_true", help="leave glibc's allocator as it is (both contenders)"
    )
    parser.add_argument("--tag", default="", help="suffix for the JSON file name")
    args = parser.parse_args()
    from ddpm_pipeline.cpu_allocator import keep_freed_memory

    allocator_tuned = device().type == "cpu" and not args.no_tune_allocator and keep_freed_memory()
    images, labels = load_digits()
    reference_data = embedded_reference()
    curves = {}
    for kind in args.models.split(","):
        if kind not in ("ours", "reference"):
            parser.error(f"--models takes ours and/or reference, got {kind!r}")
        curves[kind] = run(
            kind,
            images,
            labels,
            args.budget_minutes * 60,
            args.eval_every_minutes * 60,
            args.eval_samples,
            reference_data,
        )
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
            "bar": BAR,
            "allocator_tuned": allocator_tuned,
            "curves": curves,
            "time_to_bar_seconds": summary,
        },
    )


if __name__ == "__main__":
    main()
