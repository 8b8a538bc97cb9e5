"""The distillation run, top to bottom: the teacher's paths, the student, the steps, the checkpoints, the student saved.

Each step draws points (a path, and one of the student's timesteps on it) by a generator seeded by (seed, step), so a
resumed run draws what the uninterrupted one would have; the model, optimizer, schedule and EMA come back from the
checkpoint (accelerate's state, written atomically and verified as training's are).
"""

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from ..checkpointing import CheckpointError, list_checkpoints, read_training_state, save_checkpoint_atomically
from ..evaluation import evaluate_into_folder
from ..hardware import choose_precision, machine_summary, prepare_for_sampling, use_deterministic_kernels
from ..pipeline_loading import DDPMMnistPipeline
from ..run_folder import RunFolder
from ..training.processes import available_cores, on_main_process, share_from_main
from ..training.recovery import TrainingDivergedError
from ..training.time_budget import now
from ..unet_mnist import MnistUNet
from ..visualization import make_grid
from .config import DistillationConfig
from .student import predicted_x0, student_from_teacher, student_pipeline
from .teacher import load_paths, make_paths, paths_call

logger = logging.getLogger(__name__)
STEP_SEED_STRIDE = 1_000_003


@dataclass
class Points:
    """The teacher's paths as training points: x_t at each kept timestep, the paths' ends and their digits."""

    timesteps: list[int]
    x: torch.Tensor  # (num timesteps, N, C, H, W)
    ends: torch.Tensor
    labels: torch.Tensor

    def batch(self, seed: int, step: int, size: int, rank: int, ranks: int):
        """This rank's share of step ``step``'s global batch (the same draw however often the run was resumed)."""
        generator = torch.Generator().manual_seed(seed * STEP_SEED_STRIDE + step)
        paths = torch.randint(len(self.ends), (size,), generator=generator)[rank::ranks]
        which = torch.randint(len(self.timesteps), (size,), generator=generator)[rank::ranks]
        timesteps = torch.tensor(self.timesteps)[which]
        return self.x[which, paths], timesteps, self.labels[paths], self.ends[paths]


def distill(config: DistillationConfig, command: str | None = None) -> Path:
    started = time.perf_counter()
    output_dir = Path(config.output_dir)
    precision = choose_precision(config.mixed_precision)
    accelerator = Accelerator(mixed_precision=precision.mixed_precision)
    if config.deterministic_kernels:  # a resumed distillation is then the one that never stopped, on a GPU too
        use_deterministic_kernels(accelerator.device)
    if accelerator.device.type == "cpu":  # `accelerate launch` exports OMP_NUM_THREADS=1: share the cores instead
        torch.set_num_threads(config.num_cpu_threads or max(1, available_cores() // accelerator.num_processes))
    set_seed(config.seed)
    teacher = prepare_for_sampling(DDPMMnistPipeline.from_pretrained(config.teacher), accelerator.device)
    T = teacher.scheduler.config.num_train_timesteps
    chains = config.student_chains(T)
    keep = sorted({t for chain in chains.values() for t in chain}, reverse=True)

    # 1. the teacher's paths (the main process makes them; a re-run continues them)
    call = paths_call(teacher, config.teacher, config, keep)
    folder = output_dir / "teacher_paths"
    on_main_process(accelerator, lambda: make_paths(teacher, folder, call, accelerator.is_local_main_process))
    x, ends, labels = load_paths(folder, call)
    points = Points(keep, torch.stack([x[t] for t in keep]), ends, labels)

    # 2. the student, its optimizer, schedule and EMA
    student = student_from_teacher(teacher.unet)
    alphas = teacher.scheduler.alphas_cumprod.to(torch.float32)
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.learning_rate, weight_decay=config.adam_weight_decay)
    schedule = get_cosine_schedule_with_warmup(optimizer, config.lr_warmup_steps, config.max_train_steps)
    student, optimizer, schedule = accelerator.prepare(student, optimizer, schedule)
    ema = EMAModel(student.parameters(), decay=config.ema_max_decay, use_ema_warmup=True, model_cls=MnistUNet,
                   model_config=accelerator.unwrap_model(student).config) if config.use_ema else None  # fmt: skip
    if ema is not None:
        accelerator.register_for_checkpointing(ema)

    # 3. resume (Accelerate loads custom states onto the CPU: the EMA goes back to the student's device)
    step = resume(accelerator, config)
    if ema is not None:
        ema.to(device=next(student.parameters()).device)
    budget = config.time_budget_seconds()
    clock_start = now()
    bar = tqdm(total=config.max_train_steps, initial=step, desc="distil", disable=not accelerator.is_local_main_process)
    student.train()
    while step < config.max_train_steps:
        sample, timesteps, digits, target = points.batch(
            config.seed, step, config.train_batch_size, accelerator.process_index, accelerator.num_processes
        )
        sample, target = sample.to(accelerator.device), target.to(accelerator.device)
        with accelerator.autocast():
            output = student(sample, timesteps.to(accelerator.device), digits.to(accelerator.device)).sample
        loss = F.mse_loss(predicted_x0(output.float(), sample, alphas[timesteps].to(accelerator.device)), target)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(student.parameters(), config.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(student.parameters())
        step += 1
        value = accelerator.gather(loss.detach()[None]).mean().item()
        if not math.isfinite(value):
            raise TrainingDivergedError(
                f"The student's loss is {value} at step {step}: distillation diverged. Resume from the last checkpoint "
                "with a lower learning_rate (--resume_from_checkpoint latest --learning_rate ...)."
            )
        bar.update(1)
        bar.set_postfix(loss=f"{value:.4f}", lr=f"{schedule.get_last_lr()[0]:.2e}")
        # the main process's clock decides, so that every process stops after the same step
        out_of_time = budget is not None and share_from_main(accelerator, now() - clock_start >= budget)
        if (config.checkpointing_steps and step % config.checkpointing_steps == 0) or out_of_time:
            save_checkpoint_atomically(accelerator, output_dir, step, {"kind": "distillation"},
                                       config.checkpoints_total_limit)  # fmt: skip
        if out_of_time:
            logger.info(
                "The time budget (%s) is spent at step %d: saving the student as it is.", config.time_budget, step
            )
            break
    bar.close()

    # 4. the student pipeline (the EMA's weights), its pictures and its record
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unet = accelerator.unwrap_model(student)
        if ema is not None:
            ema.copy_to(unet.parameters())
        unet.eval()
        pipe = student_pipeline(unet, T, chains, config.default_steps)
        save_student(pipe, output_dir, config, call, step, time.perf_counter() - started, command)
    accelerator.end_training()
    return output_dir


def resume(accelerator: Accelerator, config: DistillationConfig) -> int:
    """The step to start from: 0, or a verified checkpoint's (its state loaded)."""
    if config.resume_from_checkpoint is None:
        return 0
    if config.resume_from_checkpoint == "latest":
        found = list_checkpoints(config.output_dir)
        if not found:
            logger.info("No checkpoint in %s: starting from step 0.", config.output_dir)
            return 0
        checkpoint = found[-1]
    else:
        checkpoint = Path(config.resume_from_checkpoint)
    state = read_training_state(checkpoint)
    if state.get("kind") != "distillation":
        raise CheckpointError(f"{checkpoint} is not a distillation checkpoint; resume a distillation run's own.")
    accelerator.load_state(str(checkpoint))
    return state["global_step"]


def save_student(pipe, output_dir: Path, config: DistillationConfig, call: dict, step: int, seconds: float, command):
    folder = RunFolder(output_dir)
    folder.save_pipeline(pipe)
    (output_dir / "distill_config.json").write_text(json.dumps(config.to_dict(), indent=2))
    grid = pipe(generator=torch.Generator().manual_seed(0), output_type="np")
    folder.write_pictures(make_grid(grid.images, labels=grid.class_labels))
    folder.write_run_info(
        {
            "method": "consistency distillation on the teacher's guided DDIM paths (x_0 targets, v-prediction)",
            "teacher": config.teacher,
            "teacher_paths": {k: v for k, v in call.items() if k != "keep"},
            "student_chains": pipe.scheduler.config.distilled_timesteps,
            "default_steps": config.default_steps,
            "global_step": step,
            "distill_seconds": round(seconds, 1),
            "command": command,
            **machine_summary(pipe.device),
        }
    )
    if config.evaluate_samples:  # the student's default call against real held-out digits (no NLL: it has no bound)
        evaluate_into_folder(pipe, output_dir, config.reference, num_samples=config.evaluate_samples, nll_images=0)
    folder.write_card()
    return folder
