"""One optimizer step: micro-batches from the plan, the training objective, backward, clipping, the divergence guard,
AdamW, the learning rate and EMA."""

import contextlib
import logging
import math
from dataclasses import dataclass

import torch

from ..data import scale_to_model_range
from ..divergence import PERSISTENCE, DivergenceError
from ..losses import training_losses
from .recovery import TrainingDivergedError, divergence_message
from .state import Run

logger = logging.getLogger(__name__)


@dataclass
class StepResult:
    """What one step reports: the mean losses and norms to log, and whether any process was asked to stop."""

    loss: float
    loss_simple: float
    loss_vlb: float
    grad_norm: float
    weight_norm: float | None
    stop_requested: bool

    def metrics(self) -> dict:
        names = ("loss", "loss_simple", "loss_vlb", "grad_norm", "weight_norm")
        return {name: getattr(self, name) for name in names}


def micro_batch_loss(run: Run, micro_batch: int):
    """The losses of one micro-batch: its images and randomness from the plan, and the one training objective."""
    config, parts = run.config, run.parts
    index = parts.plan.indices(micro_batch).to(parts.device)
    x0 = scale_to_model_range(parts.images[index])
    randomness = parts.plan.randomness(
        micro_batch, tuple(parts.images.shape[1:]), config.num_train_timesteps, config.cond_drop_prob
    )
    labels = parts.labels[index] if parts.num_classes is not None else None
    return training_losses(
        parts.unet,
        parts.noise_scheduler,
        x0,
        labels,
        randomness.to(parts.device),
        null_class=parts.num_classes,
        vlb_weight=config.vlb_weight,
        snr_gamma=config.snr_gamma,
        autocast=parts.accelerator.autocast,
        channels_last=config.channels_last,
    )


def optimizer_step(run: Run) -> StepResult:
    """One optimizer step over ``gradient_accumulation_steps`` micro-batches.

    The step is checked before its update (loss and gradient norm finite, no jump) and after it (weights finite, no
    jump in their norm), before EMA and any save: a diverging run stops with nothing bad written. With fp16's gradient
    scaler, an overflowing gradient is the scaler's business (it skips the update and lowers its scale); only a long
    series of them stops the run. The step reads the device twice: the losses with the gradient norm, and the
    weights' norm after the update.
    """
    parts, state = run.parts, run.state
    accelerator = parts.accelerator
    parts.unet.train()
    losses_sum = torch.zeros(3, device=parts.device)  # loss, L_simple, L_vlb: summed on the device, read once
    for micro in range(run.accumulation):
        last = micro == run.accumulation - 1
        with contextlib.nullcontext() if last else accelerator.no_sync(parts.unet):
            losses = micro_batch_loss(run, state.global_step * run.accumulation + micro)
            accelerator.backward(losses.loss / run.accumulation)
        losses_sum += torch.stack([losses.loss, losses.simple, losses.vlb]).detach().float() / run.accumulation
        state.images_seen += parts.plan.global_batch
    asked = torch.tensor([float(run.stop is not None and run.stop.asked)], device=parts.device)
    shared = torch.cat([losses_sum, asked])
    if accelerator.num_processes > 1:  # one all-reduce: the losses' sums, and whether any process was asked
        shared = accelerator.reduce(shared, "sum")
    clip = run.config.max_grad_norm or math.inf  # inf: measure the norm without clipping
    grad_norm = accelerator.clip_grad_norm_(parts.unet.parameters(), clip)
    loss, simple, vlb, stop, grad_norm = torch.cat([shared, grad_norm.detach().float().reshape(1)]).tolist()
    processes = accelerator.num_processes
    loss, simple, vlb = loss / processes, simple / processes, vlb / processes
    step = state.global_step + 1
    try:
        if gradient_overflow(run, loss, grad_norm):
            parts.optimizer.step()  # the scaler skips the update and lowers its scale
            state.guard.record_skipped_step(step, accelerator.scaler.get_scale())
        else:
            state.guard.check_before_update(step, loss, grad_norm)
            if state.guard.suspicious:
                logger.warning(
                    "Step %s; training on: only a jump that persists for %d steps stops the run.",
                    state.guard.jumps[-1].removeprefix("step "),
                    PERSISTENCE,
                )
            parts.optimizer.step()
            state.guard.check_after_update(step, list(parts.unet.parameters()))
    except DivergenceError as error:
        parts.optimizer.zero_grad(set_to_none=True)
        raise TrainingDivergedError(divergence_message(run, str(error))) from None
    state.lr_scheduler.step()
    parts.optimizer.zero_grad(set_to_none=True)
    if parts.ema is not None:
        parts.ema.step(accelerator.unwrap_model(parts.unet).parameters())
    state.global_step = step
    return StepResult(loss, simple, vlb, grad_norm, state.guard.weight_norm, stop > 0)


def gradient_overflow(run: Run, loss: float, grad_norm: float) -> bool:
    """fp16 with a gradient scaler: a finite loss whose (unscaled) gradients overflowed. The scaler skips such a step
    and lowers its scale; that is how it finds its scale, not a divergence."""
    return run.parts.accelerator.scaler is not None and math.isfinite(loss) and not math.isfinite(grad_norm)
