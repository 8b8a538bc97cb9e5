"""ddpm_pipeline.visualization: grids and labelled trajectories, checked by size, frame count and decoding."""

import numpy as np
import PIL.Image
import pytest

from ddpm_pipeline.visualization import default_frame_indices, make_grid, make_trajectory_figure, save_trajectory_gif
from tests.conftest import tiny_pipeline


def test_grid_is_6x6_and_decodes(tmp_path):
    images = np.random.default_rng(0).random((36, 28, 28, 1), dtype=np.float32)
    grid = make_grid(images, scale=2, padding=2)
    assert grid.size == (6 * (56 + 2) + 2, 6 * (56 + 2) + 2)
    grid.save(tmp_path / "g.png")
    decoded = np.asarray(PIL.Image.open(tmp_path / "g.png"))
    cell = decoded[2:58, 2:58]  # first cell, nearest-neighbour upscaled
    np.testing.assert_allclose(cell[::2, ::2] / 255.0, images[0, :, :, 0], atol=1 / 255 + 1e-6)
    labelled = make_grid(images, labels=list(range(36)))
    assert labelled.height > make_grid(images).height
    with pytest.raises(ValueError, match="labels"):
        make_grid(images, labels=[1, 2])


def test_frame_choice_favours_late_steps():
    picks = default_frame_indices(1001, 10)
    assert picks[0] == 0 and picks[-1] == 1000 and len(picks) == 10
    gaps = np.diff(picks)
    assert gaps[0] > gaps[-1]  # dense where the digit forms


def test_trajectory_figure_and_gif(tmp_path):
    pipe = tiny_pipeline(num_train_timesteps=30)
    out = pipe(batch_size=2, class_labels=[3, 4], output_type="np", return_trajectory=True, num_inference_steps="full")
    figure = make_trajectory_figure(out.trajectory, out.trajectory_timesteps, scale=2)
    columns = len(default_frame_indices(31))
    assert figure.width == columns * (56 + 4) + 4 and figure.height == 16 + 2 * (56 + 4) + 4
    count = save_trajectory_gif(out.trajectory, out.trajectory_timesteps, tmp_path / "t.gif")
    gif = PIL.Image.open(tmp_path / "t.gif")
    assert count == 31 and gif.n_frames >= 2
    with pytest.raises(ValueError, match="step labels"):
        make_trajectory_figure(out.trajectory, out.trajectory_timesteps[:-1])
