"""When a run saves its training state, and how it picks up from one: the checkpoint policy around checkpointing.py."""

import logging
from pathlib import Path

from ..checkpointing import CheckpointError, read_training_state, resolve_checkpoint, save_checkpoint_atomically
from ..divergence import all_finite
from ..training_config import TrainingConfig
from .components import build_lr_scheduler
from .recovery import UNKNOWN_LENGTH, TrainingDivergedError, divergence_message
from .state import Run

logger = logging.getLogger(__name__)


# What a run's checkpoints record of its command, and a resume takes from them where its own command is silent: the
# run's length and learning-rate schedule (a cooldown branch's and a budgeted run's included).
RUN_SETTINGS = ("time_budget", "lr_scheduler", "lr_warmup_steps", "lr_cooldown_steps", "lr_cooldown_fraction",
                "cooldown_from")  # fmt: skip


def own_checkpoint(config: TrainingConfig) -> tuple[Path | None, dict | None]:
    """The checkpoint of this run that --resume_from_checkpoint names (``latest``: the newest that verifies, or none
    yet), verified, with its state."""
    if not config.resume_from_checkpoint:
        return None, None
    checkpoint = resolve_checkpoint(config.output_dir, config.resume_from_checkpoint, None, config.model_signature())
    return (checkpoint, read_training_state(checkpoint)) if checkpoint is not None else (None, None)


def with_recorded_settings(config: TrainingConfig, checkpoint: Path, saved: dict) -> TrainingConfig:
    """``config`` with the length and schedule its checkpoint recorded, for every such key the command leaves out;
    a key the command sets to another value is refused, naming both."""
    recorded = saved.get("run_settings")
    if not recorded:  # checkpoints of older versions: the command's own settings
        return config
    given = config.model_fields_set
    for key, value in recorded.items():
        if key in given and getattr(config, key) != value:
            raise CheckpointError(
                f"{checkpoint} belongs to a run with {key} {value!r}; this command gives --{key} "
                f"{getattr(config, key)!r}. Leave --{key} out to continue that run as it was planned, or start a new "
                "run in another --output_dir (a wsd run can branch a cooldown of its own with --cooldown_from)."
            )
    return config.with_values(**{key: value for key, value in recorded.items() if key not in given})


def branch_point(config: TrainingConfig) -> tuple[Path, dict]:
    """The checkpoint a cooldown branch starts from (--cooldown_from), verified, with its state."""
    checkpoint = resolve_checkpoint(config.output_dir, config.cooldown_from, None, config.model_signature())
    return checkpoint, read_training_state(checkpoint)


def planned_length(config: TrainingConfig, steps_per_epoch: int, start: dict | None = None, own=False) -> int | None:
    """The run's length in steps: a cooldown branch's is its branch point's step plus the cooldown (``start`` is the
    state of the checkpoint it starts from: its branch point, or once it has checkpoints of its ``own``, the length
    they recorded); None for a --time_budget run (its speed decides); else max_train_steps, or the epochs."""
    if config.time_budget is not None:
        return None
    if config.cooldown_from:
        return start["max_train_steps"] if own else start["global_step"] + config.lr_cooldown_steps
    return config.max_train_steps or config.num_epochs * steps_per_epoch


def rebuild_lr_schedule(run: Run):
    """The learning-rate schedule is a function of the config, the run's length and the step: built afresh at the
    current step (on resume, with this config's learning rate; and whenever a --time_budget run plans its length)."""
    optimizer = getattr(run.parts.optimizer, "optimizer", run.parts.optimizer)  # Accelerate's wrapper, or torch's
    state = run.state
    state.lr_scheduler = build_lr_scheduler(run.config, optimizer, state.total_steps, at_step=state.global_step)


def resume(run: Run):
    """Continue from the checkpoint found at set-up (this run's own, or a cooldown branch's branch point), verified,
    with this config's learning rate (and, for a --time_budget run, the length and time its checkpoint recorded)."""
    config, state, accelerator = run.config, run.state, run.parts.accelerator
    checkpoint = run.resumes_from
    if checkpoint is None:
        if config.resume_from_checkpoint:
            logger.info("No checkpoint in %s verifies yet; starting from scratch.", run.output_dir)
        return
    saved = read_training_state(checkpoint)
    step = saved["global_step"]
    if state.total_steps is not None and step > state.total_steps:
        raise CheckpointError(
            f"{checkpoint} is at step {step}, beyond this run's {state.total_steps} steps; resume with "
            f"--max_train_steps {step} or more, or leave the length flags out to continue the run as it was planned."
        )
    try:
        accelerator.load_state(str(checkpoint))
    except Exception as error:
        raise CheckpointError(
            f"Checkpoint {checkpoint} could not be loaded ({type(error).__name__}: {error}). It may be corrupt "
            "or from a different model config; resume from another checkpoint or start afresh."
        ) from error
    if run.parts.ema is not None:  # Accelerate loads custom states onto the CPU; the EMA belongs with the model
        run.parts.ema.to(device=next(run.parts.unet.parameters()).device)
    check_same_global_batch(run, saved, checkpoint)
    state.global_step = state.resumed_from_step = saved["global_step"]
    state.earlier_seconds = saved.get("train_seconds")  # older checkpoints did not record it
    if state.global_step:
        state.last_picture_epoch = run.parts.plan.epoch_of(state.global_step * run.accumulation)
    if run.budget is not None:
        run.budget.spent = saved.get("budget_seconds_spent", state.earlier_seconds or 0.0)
        if saved.get("max_train_steps", UNKNOWN_LENGTH) < UNKNOWN_LENGTH:  # planned: re-planned on if not final yet
            state.total_steps = run.budget.planned_steps = saved["max_train_steps"]
            final = "final" if saved.get("time_budget_fixed") else "planned so far"
            logger.info("Time budget: the run's length, %d steps, from its checkpoint (%s).", state.total_steps, final)
    if state.total_steps is not None:
        rebuild_lr_schedule(run)
    logger.info("Resumed from %s at step %d.", checkpoint, state.global_step)


def check_same_global_batch(run: Run, saved: dict, checkpoint: Path):
    """Batches are a function of the seed, the step and the global batch, so a resume on another number of processes
    is exact when the global batch (processes x train_batch_size) is the same; another global batch is refused."""
    accelerator, plan = run.parts.accelerator, run.parts.plan
    global_batch = saved.get("global_batch")
    if global_batch is None or global_batch == plan.global_batch:
        if saved.get("num_processes", accelerator.num_processes) != accelerator.num_processes:
            logger.info("Resuming %d process(es)' run on %d, same global batch %d: the same batches.",
                        saved["num_processes"], accelerator.num_processes, global_batch)  # fmt: skip
        return
    processes = saved.get("num_processes", "?")
    per_process = global_batch // processes if isinstance(processes, int) else "?"
    raise CheckpointError(
        f"{checkpoint} was saved by a run with global batch {global_batch} ({processes} process(es) x {per_process}); "
        f"this run's is {plan.global_batch} ({accelerator.num_processes} x {run.config.train_batch_size}). Resume "
        f"with --train_batch_size {global_batch // accelerator.num_processes} on {accelerator.num_processes} "
        "process(es) (the same batches), or start a new run."
    )


def checkpoint_due(run: Run) -> bool:
    """Every checkpointing_steps, never at the end (the final pipeline is saved then)."""
    every, step, total = run.config.checkpointing_steps, run.state.global_step, run.state.total_steps
    due = (bool(every) and step % every == 0) or run.state.checkpoint_held
    return due and (total is None or step < total)


def save_checkpoint_when_safe(run: Run):
    """A checkpoint that falls on a suspicious step (see divergence.py) waits for a normal step, so that the start of
    a divergence is never saved."""
    state = run.state
    if state.guard.suspicious:
        if not state.checkpoint_held:
            logger.warning("Holding back the checkpoint of step %d until a step looks normal again.", state.global_step)
        state.checkpoint_held = True
        return
    state.checkpoint_held = False
    save_checkpoint(run)


def save_checkpoint(run: Run):
    """The training state, atomically, with a manifest; never from weights that are not finite."""
    parts, state = run.parts, run.state
    tensors = list(parts.unet.parameters()) + (list(parts.ema.shadow_params) if parts.ema is not None else [])
    if not all_finite(tensors):
        raise TrainingDivergedError(divergence_message(run, f"some weights are not finite at step {state.global_step}"))
    extra = {
        "max_train_steps": state.total_steps or UNKNOWN_LENGTH,
        "model_config": run.config.model_signature(),
        "global_batch": parts.plan.global_batch,
        "num_processes": parts.accelerator.num_processes,
        "time_budget_fixed": run.budget is not None and run.budget.final(state.global_step),
        "train_seconds": run.training_seconds(),
        "run_settings": {key: getattr(run.config, key) for key in RUN_SETTINGS},
    }
    if run.budget is not None:
        extra["budget_seconds_spent"] = run.budget.elapsed
    path = save_checkpoint_atomically(
        parts.accelerator, run.output_dir, state.global_step, extra, total_limit=run.config.checkpoints_total_limit
    )
    logger.info("Saved %s", path)
