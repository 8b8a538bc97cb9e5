"""The training loop, top to bottom: set up, resume, then step, log, maybe stop, maybe checkpoint, maybe pictures;
finally the pipeline, its pictures and card.

The loop in the diffusers examples' style, with what their users ask for: one-channel data, a seed that fixes
everything, exact resume (the data order, noise and timesteps are functions of the seed and the step, so a resumed
run replays the same batches), atomic checkpoints kept out of the pushed model, EMA weights that never overwrite the
training weights, a time budget, and a clean stop on Ctrl-C or a cluster's signal.
"""

import contextlib
import logging
import time
from pathlib import Path

import torch
from accelerate.utils import broadcast, gather_object
from tqdm.auto import tqdm

from ..preemption import EXIT_INTERRUPTED, EXIT_PREEMPTED, OutputDirInUse, RunLock, StopRequest
from ..training_config import ConfigError, TrainingConfig
from .checkpoints import (
    branch_point,
    checkpoint_due,
    own_checkpoint,
    planned_length,
    rebuild_lr_schedule,
    resume,
    save_checkpoint,
    save_checkpoint_when_safe,
    with_recorded_settings,
)
from .components import build_components, cooldown_length
from .finish import epoch_for_pictures, finish, save_epoch_pictures, save_weight_snapshot
from .processes import is_main_launch_process, launched_processes, setup_accelerator, setup_device, share_from_main
from .recovery import TrainingStopped, stop_message
from .state import Run, RunState
from .step import StepResult, optimizer_step
from .time_budget import BudgetTooShort, TimeBudget

logger = logging.getLogger(__name__)


def train(config: TrainingConfig, argv: list[str] | None = None) -> Path:
    """Run training; returns the output folder, which then holds a loadable pipeline and its pictures. ``argv``, the
    flags the run was started with, goes into the model card and into the commands a stop or a divergence prints."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    config.check_output_dir()
    # 1. the output folder's lock first (seconds, before data, model or process group), and stop signals recorded
    with exclusive_output_dir(config) as refusal, StopRequest().install() as stop:
        # 2. set up: the accelerator and precision, data, UNet, scheduler, AdamW, EMA, the run's length and schedule
        accelerator, precision = setup_accelerator(config)
        refuse_if_busy(accelerator, refusal)
        setup_device(accelerator, config)
        run = setup_run(config, build_components(config, accelerator, precision), stop, argv)
        # 3. resume from a verified checkpoint, if asked, with this config's learning rate
        resume(run)
        start_logging(run)
        run.state.started = time.perf_counter()
        if run.budget is not None:
            run.budget.start()
        with progress_bar(run) as progress:
            while run.state.total_steps is None or run.state.global_step < run.state.total_steps:
                # 4. one optimizer step: micro-batches, backward, clipping, the divergence guard, AdamW, LR, EMA
                result = optimizer_step(run)
                if run.budget is not None:  # a --time_budget run plans (and re-plans) its length from its speed
                    follow_budget(run, progress)
                # 5. the losses, learning rate and throughput to the tracker and the progress bar
                log_step(run, result, progress)
                # 6. asked to stop (Ctrl-C, SIGHUP, SIGTERM, SIGUSR1): every rank saves this step whole, then exits
                if result.stop_requested:  # every rank learnt it in the step's one all-reduce
                    stop_and_save(run)
                # 7. the training state, every checkpointing_steps (atomically; held back while a step is suspicious)
                if checkpoint_due(run):
                    save_checkpoint_when_safe(run)
                # 8. the raw weights, for post-hoc EMA, every weight_snapshot_steps
                if config.weight_snapshot_steps and run.state.global_step % config.weight_snapshot_steps == 0:
                    save_weight_snapshot(run)
                # 9. a sample grid from the EMA weights, after every save_images_epochs-th epoch
                epoch = epoch_for_pictures(run)
                if epoch is not None:
                    save_epoch_pictures(run, epoch)
        # 10. the final pipeline, its pictures and card; evaluation and push when asked
        finish(run)
    return run.output_dir


# ---------------------------------------------------------------------------------------------------- set-up
@contextlib.contextmanager
def exclusive_output_dir(config: TrainingConfig):
    """Rank 0 takes the output folder's lock before anything heavy and yields None, or why it cannot (another live
    run holds it). One process refuses at once; several learn rank 0's answer once their process group exists."""
    lock, refusal = None, None
    if is_main_launch_process():
        try:
            lock = RunLock(config.output_dir).acquire()
        except OutputDirInUse as error:
            if launched_processes() == 1:
                raise
            refusal = str(error)
    try:
        yield refusal
    finally:
        if lock is not None:
            lock.release()


def refuse_if_busy(accelerator, refusal: str | None):
    refusal = share_from_main(accelerator, refusal)
    if refusal:
        raise OutputDirInUse(refusal)


def build_run(config: TrainingConfig, argv: list[str] | None = None) -> Run:
    """A run at step 0, set up as ``train`` sets it up, without the lock or signals (for tests and benchmarks)."""
    accelerator, precision = setup_accelerator(config)
    setup_device(accelerator, config)
    return setup_run(config, build_components(config, accelerator, precision), None, argv)


def setup_run(config: TrainingConfig, parts, stop: StopRequest | None = None, argv: list[str] | None = None) -> Run:
    """The run's state at step 0: its length (None while a budget measures the speed) and learning-rate schedule."""
    if stop is not None and stop.asked:
        raise TrainingStopped(f"{stop.signal_name} received during set-up: nothing was trained or saved.",
                              stop.exit_code)  # fmt: skip
    checkpoint, saved = own_checkpoint(config)
    own = checkpoint is not None
    if own:  # the run's length and schedule as its checkpoint recorded them
        config = with_recorded_settings(config, checkpoint, saved)
    elif config.cooldown_from:  # a cooldown branch's first start: from the run it branches from
        checkpoint, saved = branch_point(config)
    steps_per_epoch = max(1, parts.plan.micro_batches_per_epoch // config.gradient_accumulation_steps)
    total = planned_length(config, steps_per_epoch, saved, own)
    budget = None
    if config.time_budget is not None:
        budget = TimeBudget(
            config.time_budget_seconds(), config.lr_warmup_steps, lambda steps: cooldown_length(config, steps)
        )
    run = Run(config=config, parts=parts, state=RunState(total_steps=total, lr_scheduler=None), budget=budget,
              stop=stop, argv=argv, resumes_from=checkpoint)  # fmt: skip
    # Stepped by hand once per optimizer step (not prepared: Accelerate would step it once per process). Not saved in
    # checkpoints: it is a function of the config, the run's length and the step, built again on resume. A budgeted
    # run's warm-up rates do not depend on its length: any length will do until the speed is measured.
    run.state.total_steps = total if total is not None else 10**9
    rebuild_lr_schedule(run)
    run.state.total_steps = total
    return run


def start_logging(run: Run):
    config, parts = run.config, run.parts
    if parts.accelerator.is_main_process:
        run.output_dir.mkdir(parents=True, exist_ok=True)
        parts.accelerator.init_trackers("ddpm-mnist", config={k: str(v) for k, v in config.to_dict().items()})
    steps_per_epoch = max(1, parts.plan.micro_batches_per_epoch // run.accumulation)
    total = run.state.total_steps
    logger.info(
        "Training on %d images for %s steps (%d an epoch), global batch %d (%d process(es) x %d) x %d accumulation, "
        "warm-up %d steps, a checkpoint every %s steps.",
        len(parts.images),
        total if total is not None else "--time_budget",
        steps_per_epoch,
        parts.plan.global_batch,
        parts.accelerator.num_processes,
        config.train_batch_size,
        run.accumulation,
        config.lr_warmup_steps,
        config.checkpointing_steps or "no",
    )
    if total is not None and config.checkpointing_steps >= total:
        logger.warning("No checkpoint comes before the end: checkpointing_steps %d >= the run's %d steps.",
                       config.checkpointing_steps, total)  # fmt: skip


@contextlib.contextmanager
def progress_bar(run: Run):
    progress = tqdm(
        total=run.state.total_steps,  # a --time_budget run knows it after its warm-up
        initial=run.state.global_step,
        desc="train",
        disable=not run.parts.accelerator.is_local_main_process,
    )
    with progress:
        yield progress


# ---------------------------------------------------------------------------------------------------- each step
def follow_budget(run: Run, progress):
    """--time_budget: plan the run's length once the warm-up has measured the speed, and re-plan it while the
    learning rate is constant; every process takes rank 0's numbers."""
    device = run.parts.device

    def decide(steps: int) -> int:
        return int(broadcast(torch.tensor(steps, device=device), from_process=0))

    first = run.state.total_steps is None
    try:
        steps = run.budget.after_step(run.state.global_step, decide)
    except BudgetTooShort as error:
        raise ConfigError(
            f"Invalid config value for 'time_budget' ({run.config.time_budget!r}): {error}. Give a longer budget, or "
            "lower --lr_warmup_steps."
        ) from None
    if steps is None:
        return
    every = run.config.checkpointing_steps
    if first and every and steps <= every:
        logger.warning("Time budget %s allows %d steps: no checkpoint (every %d steps) comes before the end.",
                       run.config.time_budget, steps, every)  # fmt: skip
    run.state.total_steps = steps
    rebuild_lr_schedule(run)
    progress.total = steps
    progress.refresh()


def log_step(run: Run, result: StepResult, progress):
    state, parts = run.state, run.parts
    images_per_second = state.images_seen / max(time.perf_counter() - state.started, 1e-9)
    logs = {**result.metrics(), "lr": state.lr_scheduler.get_last_lr()[0], "images_per_second": images_per_second}
    if parts.ema is not None:
        logs["ema_decay"] = parts.ema.cur_decay_value or 0.0
    progress.update(1)
    progress.set_postfix(loss=f"{result.loss:.4f}", img_s=f"{images_per_second:.0f}")
    parts.accelerator.log(logs, step=state.global_step)


def stop_and_save(run: Run):
    """Every rank finished this step; save it whole and stop with the signal's exit code (the same on every rank:
    the first signal any rank received) and the command that continues the run."""
    run.stop.saving = True
    name = run.stop.signal_name
    if run.parts.accelerator.num_processes > 1:  # one more collective, once: which signal it was
        name = next((n for n in gather_object([name]) if n is not None), name)
    save_checkpoint(run)
    run.stop.saving = False
    exit_code = EXIT_INTERRUPTED if name == "SIGINT" else EXIT_PREEMPTED
    raise TrainingStopped(stop_message(run, name), exit_code)
