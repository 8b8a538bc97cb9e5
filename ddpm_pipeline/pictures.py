"""What a training run leaves in its output folder: the pipeline, samples.png, trajectory.png, its config, a card."""

import json
from pathlib import Path

import torch
import yaml

from .model_card import write_model_card
from .visualization import make_grid, make_trajectory_figure

GRID_SIZE = 36
PICTURE_SEED = 1234


def sample_labels(config, count: int = GRID_SIZE) -> list[int] | None:
    """The digits asked for in pictures: the trained digits in reading order, or None for an unconditional model."""
    if not config.class_conditional:
        return None
    digits = config.digits or list(range(10))
    return [digits[i % len(digits)] for i in range(count)]


def _sample_for_pictures(pipe, labels, count, return_trajectory=False):
    """The fixed-seed samples every picture of a run is made from: the pipeline's default call (the sampling settings
    it is saved with), so the pictures show what `pipe()` gives."""
    return pipe(
        batch_size=count,
        class_labels=labels,
        generator=torch.Generator().manual_seed(PICTURE_SEED),
        output_type="np",
        return_trajectory=return_trajectory,
    )


def save_sample_grid(pipe, path: Path, config):
    """A 6x6 grid of samples (EMA weights), each cell captioned with its requested digit."""
    labels = sample_labels(config)
    out = _sample_for_pictures(pipe, labels, GRID_SIZE)
    grid = make_grid(out.images, labels=labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return grid


def save_trajectory_picture(pipe, path: Path, config, num_samples: int = 4):
    labels = sample_labels(config, num_samples)
    out = _sample_for_pictures(pipe, labels, num_samples, return_trajectory=True)
    figure = make_trajectory_figure(out.trajectory, out.trajectory_timesteps)
    figure.save(path)
    return figure


def redraw_pictures(folder: Path):
    """samples.png and trajectory.png of a saved run drawn again from the pipeline's saved default call, as its
    training drew them (float32, the same seed), after that call changed (``guidance_sweep --save``)."""
    from .pipeline_ddpm_mnist import DDPMMnistPipeline
    from .training_config import TrainingConfig

    folder = Path(folder)
    config = TrainingConfig.from_yaml(folder / "train_config.yaml")
    pipe = DDPMMnistPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    save_sample_grid(pipe, folder / "samples.png", config)
    save_trajectory_picture(pipe, folder / "trajectory.png", config)


def save_final_outputs(pipe, output_dir: Path, config, run_info: dict, evaluation: dict | None = None):
    """Save the pipeline (safetensors), samples.png, trajectory.png, the config used and the model card."""
    output_dir.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(output_dir, safe_serialization=True)
    grid = save_sample_grid(pipe, output_dir / "samples.png", config)
    save_trajectory_picture(pipe, output_dir / "trajectory.png", config)
    (output_dir / "train_config.yaml").write_text(yaml.safe_dump(config.to_dict(redact_secrets=True), sort_keys=False))
    (output_dir / "run_info.json").write_text(json.dumps(run_info, indent=2))
    write_model_card(output_dir, config.to_dict(redact_secrets=True), run_info, evaluation)
    return grid
