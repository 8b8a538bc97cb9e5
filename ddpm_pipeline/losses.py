"""The training objective: L_simple, and Improved DDPM's hybrid loss when the variance is learned."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .scheduling_ddpm_cosine import CosineDDPMScheduler


@dataclass
class DiffusionLoss:
    loss: torch.Tensor  # what is back-propagated
    simple: torch.Tensor  # L_simple: MSE on the noise (or v)
    vlb: torch.Tensor  # L_vlb estimate, T * L_t in bits/dim (0 with a fixed variance)


def diffusion_loss(
    model_output: torch.Tensor,
    scheduler: CosineDDPMScheduler,
    original_samples: torch.Tensor,
    noise: torch.Tensor,
    noisy_samples: torch.Tensor,
    timesteps: torch.Tensor,
    vlb_weight: float = 0.001,
) -> DiffusionLoss:
    """L_hybrid = L_simple + vlb_weight * L_vlb (Nichol & Dhariwal 2021, Sec. 3.1).

    With t drawn uniformly, T * L_t is an unbiased estimate of L_vlb = sum_t L_t. The bound's gradient reaches the
    variance only (the mean is detached), so L_simple alone drives the mean, as in the paper.
    """
    model_output = model_output.float()
    channels = original_samples.shape[1]
    if scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(original_samples, noise, timesteps)
    else:
        target = noise
    simple = F.mse_loss(model_output[:, :channels], target)
    if scheduler.config.variance_type != "learned_range":
        return DiffusionLoss(loss=simple, simple=simple, vlb=torch.zeros((), device=simple.device))
    terms = scheduler.variational_bound_terms(
        model_output, original_samples, noisy_samples, timesteps, stop_mean_gradient=True
    )
    vlb = terms.mean() * scheduler.config.num_train_timesteps
    return DiffusionLoss(loss=simple + vlb_weight * vlb, simple=simple, vlb=vlb)
