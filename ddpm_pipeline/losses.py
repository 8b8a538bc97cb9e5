"""The training objective, in one place: ``training_losses`` noises a batch, drops labels for guidance, runs the UNet
and returns L_simple and Improved DDPM's hybrid loss (in the spirit of improved-diffusion's ``training_losses``).

``train_ddpm.py`` and the benchmarks call it, so that a benchmark trains what the default run trains.
"""

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .batch_plan import BatchRandomness
from .scheduling_ddpm_cosine import CosineDDPMScheduler


@dataclass
class DiffusionLoss:
    loss: torch.Tensor  # what is back-propagated
    simple: torch.Tensor  # L_simple: MSE on the prediction target (noise, v or x_0)
    vlb: torch.Tensor  # L_vlb estimate, T * L_t in bits/dim (0 with a fixed variance)


def prediction_target(scheduler, original_samples, noise, timesteps) -> torch.Tensor:
    """What the network's first channels are trained to output, for every prediction type the scheduler accepts."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":  # v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022)
        return scheduler.get_velocity(original_samples, noise, timesteps)
    if kind == "sample":
        return original_samples
    raise ValueError(f"No training target for prediction_type {kind!r}: use epsilon, v_prediction or sample.")


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023), per sample: the MSE of each prediction type rescaled so that it
    weighs the x_0 error by min(SNR_t, gamma), SNR_t = abar_t / (1 - abar_t). Low-noise steps (huge SNR) stop
    dominating the gradient. Computed in float64 on the CPU (the schedule's tables), then sent as float32: some
    accelerators (Apple's mps) have no float64."""
    abar = scheduler.train_chain.alphas_cumprod[timesteps.long().cpu()]
    snr = abar / (1.0 - abar)
    clipped = torch.clamp(snr, max=gamma)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        weights = clipped / snr
    elif kind == "v_prediction":
        weights = clipped / (snr + 1.0)
    else:
        weights = clipped
    return weights.float().to(timesteps.device)


def diffusion_loss(
    model_output: torch.Tensor,
    scheduler: CosineDDPMScheduler,
    original_samples: torch.Tensor,
    noise: torch.Tensor,
    noisy_samples: torch.Tensor,
    timesteps: torch.Tensor,
    vlb_weight: float = 0.001,
    snr_gamma: float | None = None,
    vlb_importance: torch.Tensor | None = None,
) -> DiffusionLoss:
    """L_hybrid = L_simple + vlb_weight * L_vlb (Nichol & Dhariwal 2021, Sec. 3.1).

    With t drawn uniformly, T * L_t is an unbiased estimate of L_vlb = sum_t L_t; with another distribution p(t),
    ``vlb_importance`` = 1 / (T p(t)) per sample keeps it so. The bound's gradient reaches the variance only (the mean
    is detached), so L_simple alone drives the mean, as in the paper. ``snr_gamma`` weighs L_simple by min-SNR-gamma.
    """
    model_output = model_output.float()
    channels = original_samples.shape[1]
    target = prediction_target(scheduler, original_samples, noise, timesteps)
    if snr_gamma is None:
        simple = F.mse_loss(model_output[:, :channels], target)
    else:
        per_sample = ((model_output[:, :channels] - target) ** 2).mean(dim=tuple(range(1, target.ndim)))
        simple = (min_snr_weights(scheduler, timesteps, snr_gamma) * per_sample).mean()
    if scheduler.config.variance_type != "learned_range":
        return DiffusionLoss(loss=simple, simple=simple, vlb=torch.zeros((), device=simple.device))
    terms = scheduler.variational_bound_terms(
        model_output, original_samples, noisy_samples, timesteps, stop_mean_gradient=True
    )
    if vlb_importance is not None:
        terms = terms * vlb_importance.to(terms.device)
    vlb = terms.mean() * scheduler.config.num_train_timesteps
    return DiffusionLoss(loss=simple + vlb_weight * vlb, simple=simple, vlb=vlb)


def training_losses(
    model,
    scheduler: CosineDDPMScheduler,
    original_samples: torch.Tensor,
    class_labels: torch.Tensor | None,
    randomness: BatchRandomness,
    null_class: int | None = None,
    vlb_weight: float = 0.001,
    snr_gamma: float | None = None,
    autocast=contextlib.nullcontext,
    channels_last: bool = False,
) -> DiffusionLoss:
    """The losses of one batch of clean images ``original_samples`` in [-1, 1].

    x_t ~ q(x_t | x_0) by the reparameterization trick at ``randomness.timesteps``; labels flagged in
    ``randomness.drop_labels`` become ``null_class`` (classifier-free guidance); the model runs under ``autocast``
    (e.g. ``accelerator.autocast``); then L_hybrid, with ``randomness.vlb_importance`` weighting the bound when the
    timesteps were not drawn uniformly.
    """
    noise, timesteps = randomness.noise, randomness.timesteps
    noisy = scheduler.add_noise(original_samples, noise, timesteps)
    if channels_last:
        noisy = noisy.contiguous(memory_format=torch.channels_last)
    if class_labels is not None and null_class is not None:
        class_labels = torch.where(randomness.drop_labels, torch.full_like(class_labels, null_class), class_labels)
    with autocast():
        model_output = model(noisy, timesteps, class_labels).sample
    return diffusion_loss(
        model_output,
        scheduler,
        original_samples,
        noise,
        noisy,
        timesteps,
        vlb_weight,
        snr_gamma=snr_gamma,
        vlb_importance=randomness.vlb_importance,
    )
