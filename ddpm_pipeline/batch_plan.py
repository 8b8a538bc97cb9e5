"""Which images, noise, timesteps and label drops each micro-batch uses: a pure function of the seed and the step.

Because nothing depends on what ran before, a resumed run (with or without gradient accumulation) replays exactly the
batches an uninterrupted run would have seen, and N processes see exactly the batches of one process with N times the
batch size.
"""

from dataclasses import dataclass

import torch


class BatchPlan:
    """The data order and randomness of micro-batch ``m``, as a function of (seed, m).

    Every process draws the randomness of the whole global batch and takes its own slice, so ranks never share noise.
    """

    def __init__(
        self,
        seed: int,
        batch_size: int,
        num_images: int,
        num_processes: int = 1,
        process_index: int = 0,
        timestep_probabilities: torch.Tensor | None = None,
    ):
        self.seed = seed
        self.timestep_probabilities = timestep_probabilities  # None: uniform
        self.local_batch = batch_size
        self.global_batch = batch_size * num_processes
        self.process_index = process_index
        self.num_images = num_images
        self.micro_batches_per_epoch = num_images // self.global_batch
        if self.micro_batches_per_epoch == 0:
            raise ValueError(
                f"a global batch of {self.global_batch} images is larger than the {num_images} training images"
            )
        self._epoch, self._order = None, None

    def _generator(self, *keys: int) -> torch.Generator:
        mixed = self.seed
        for key in keys:  # a fixed integer mix, the same in every process and Python version
            mixed = (mixed * 0x9E3779B1 + key + 1) % (2**61 - 1)
        return torch.Generator().manual_seed(mixed)

    def epoch_of(self, micro_batch: int) -> int:
        return micro_batch // self.micro_batches_per_epoch

    def indices(self, micro_batch: int) -> torch.Tensor:
        """The images of this process's share of ``micro_batch``: each epoch is a fresh permutation."""
        epoch, position = divmod(micro_batch, self.micro_batches_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._order = epoch, torch.randperm(self.num_images, generator=self._generator(0, epoch))
        start = position * self.global_batch + self.process_index * self.local_batch
        return self._order[start : start + self.local_batch]

    def randomness(
        self, micro_batch: int, image_shape, num_train_timesteps: int, cond_drop_prob: float
    ) -> "BatchRandomness":
        """The noise, timesteps (with their importance weights) and label drops of this process's share of
        ``micro_batch``; timesteps are uniform, or drawn from ``timestep_probabilities``."""
        generator = self._generator(1, micro_batch)
        noise = torch.randn((self.global_batch, *image_shape), generator=generator)
        if self.timestep_probabilities is None:
            timesteps = torch.randint(0, num_train_timesteps, (self.global_batch,), generator=generator)
        else:
            timesteps = torch.multinomial(self.timestep_probabilities, self.global_batch, True, generator=generator)
        drop = torch.rand(self.global_batch, generator=generator) < cond_drop_prob
        mine = slice(self.process_index * self.local_batch, (self.process_index + 1) * self.local_batch)
        weights = None
        if self.timestep_probabilities is not None:  # 1 / (T p(t)) keeps T * L_t an unbiased estimate of the bound
            weights = 1.0 / (num_train_timesteps * self.timestep_probabilities[timesteps[mine]])
        return BatchRandomness(noise[mine], timesteps[mine], drop[mine], weights)


@dataclass
class BatchRandomness:
    """What one micro-batch draws: noise, timesteps and their importance weights (None when t is uniform), and which
    labels are dropped to the null class. On the CPU; ``to(device)`` moves it."""

    noise: torch.Tensor
    timesteps: torch.Tensor
    drop_labels: torch.Tensor
    vlb_importance: torch.Tensor | None = None

    def to(self, device) -> "BatchRandomness":
        weights = self.vlb_importance.to(device) if self.vlb_importance is not None else None
        return BatchRandomness(self.noise.to(device), self.timesteps.to(device), self.drop_labels.to(device), weights)


def lognormal_timestep_probabilities(
    alphas_cumprod: torch.Tensor, mean: float = -1.2, std: float = 1.2, uniform_share: float = 0.5
) -> torch.Tensor:
    """p(t) over the T timesteps for EDM's noise-level distribution (Karras et al. 2022): ln sigma ~ N(mean, std^2)
    with sigma_t = sqrt((1 - abar_t) / abar_t), each t taking the probability mass of its bin of ln sigma.

    ``uniform_share`` of the draws stay uniform, so every timestep keeps being trained (the learned variance needs
    all of them) and the importance weights 1 / (T p(t)) of the bound stay below 1 / uniform_share.
    """
    abar = alphas_cumprod.double()
    log_sigma = 0.5 * (torch.log1p(-abar) - torch.log(abar))
    edges = (log_sigma[1:] + log_sigma[:-1]) / 2
    cdf = 0.5 * (1 + torch.erf((edges - mean) / (std * 2**0.5)))
    cdf = torch.cat([torch.zeros(1, dtype=cdf.dtype), cdf, torch.ones(1, dtype=cdf.dtype)])
    lognormal = cdf[1:] - cdf[:-1]
    uniform = torch.full_like(lognormal, 1.0 / len(lognormal))
    return (uniform_share * uniform + (1 - uniform_share) * lognormal).float()
