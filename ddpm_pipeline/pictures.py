"""The pictures of a run: a 6x6 grid of samples and a denoising trajectory, drawn from a pipeline's default call with
a fixed seed, so that the pictures show what `pipe()` gives. RunFolder writes them."""

import torch

from .visualization import make_grid, make_trajectory_figure

GRID_SIZE = 36
TRAJECTORY_SAMPLES = 4
PICTURE_SEED = 1234


def sample_labels(config: dict, count: int = GRID_SIZE) -> list[int] | None:
    """The digits asked for in pictures: the trained digits in reading order, or None for an unconditional model."""
    if not config.get("class_conditional", True):
        return None
    digits = config.get("digits") or list(range(10))
    return [digits[i % len(digits)] for i in range(count)]


def _sample(pipe, labels, count, return_trajectory=False):
    return pipe(
        batch_size=count,
        class_labels=labels,
        generator=torch.Generator().manual_seed(PICTURE_SEED),
        output_type="np",
        return_trajectory=return_trajectory,
    )


def sample_grid(pipe, config: dict):
    """A 6x6 grid of samples, each cell captioned with its requested digit."""
    labels = sample_labels(config)
    return make_grid(_sample(pipe, labels, GRID_SIZE).images, labels=labels)


def trajectory_picture(pipe, config: dict):
    """A few samples' way from noise to digit, one column per step."""
    out = _sample(pipe, sample_labels(config, TRAJECTORY_SAMPLES), TRAJECTORY_SAMPLES, return_trajectory=True)
    return make_trajectory_figure(out.trajectory, out.trajectory_timesteps)
