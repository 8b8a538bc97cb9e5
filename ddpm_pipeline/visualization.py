"""Pictures people would rather look at than read: sample grids, labelled denoising trajectories, GIFs (Pillow)."""

import math
from pathlib import Path

import numpy as np
import PIL.Image
from PIL import ImageDraw, ImageFont

BACKGROUND = 255
TEXT = 0


def _as_uint8(images) -> list[PIL.Image.Image]:
    """Accept PIL images, or arrays in [0, 1] shaped (B, H, W[, 1]), and give grayscale PIL images."""
    if isinstance(images, np.ndarray) or hasattr(images, "numpy"):
        array = np.asarray(images.cpu() if hasattr(images, "cpu") else images, dtype=np.float32)
        if array.ndim == 4 and array.shape[1] == 1 and array.shape[-1] != 1:  # (B, 1, H, W) tensor layout
            array = array[:, 0]
        if array.ndim == 4:
            array = array[..., 0]
        return [PIL.Image.fromarray((a.clip(0, 1) * 255).round().astype(np.uint8), mode="L") for a in array]
    return [image.convert("L") for image in images]


def _font(size: int):
    return ImageFont.load_default(size=size)


def make_grid(images, rows: int | None = None, scale: int = 3, padding: int = 2, labels: list | None = None):
    """Tile images into a grid (6x6 for 36). With ``labels``, each cell gets a caption strip (e.g. the digit asked)."""
    tiles = _as_uint8(images)
    if not tiles:
        raise ValueError("make_grid needs at least one image.")
    if labels is not None and len(labels) != len(tiles):
        raise ValueError(f"{len(labels)} labels for {len(tiles)} images.")
    columns = math.ceil(math.sqrt(len(tiles))) if rows is None else math.ceil(len(tiles) / rows)
    rows = math.ceil(len(tiles) / columns)
    width, height = tiles[0].size[0] * scale, tiles[0].size[1] * scale
    caption = 14 if labels is not None else 0
    grid = PIL.Image.new(
        "L", (columns * (width + padding) + padding, rows * (height + caption + padding) + padding), BACKGROUND
    )
    draw = ImageDraw.Draw(grid)
    font = _font(11)
    for i, tile in enumerate(tiles):
        x = padding + (i % columns) * (width + padding)
        y = padding + (i // columns) * (height + caption + padding)
        grid.paste(tile.resize((width, height), PIL.Image.NEAREST), (x, y + caption))
        if labels is not None:
            draw.text((x + 2, y), str(labels[i]), fill=TEXT, font=font)
    return grid


def default_frame_indices(num_frames: int, count: int = 10) -> list[int]:
    """About ``count`` frame positions from first to last, denser at the end where the digit forms.

    Positions follow a quadratic ease, so with 1,000 steps the frames sit near steps 1000, 802, 624, ..., 12, 0.
    """
    if num_frames <= count:
        return list(range(num_frames))
    last = num_frames - 1
    positions = [round(last * (1 - (1 - k / (count - 1)) ** 2)) for k in range(count)]
    unique = sorted(set(positions))
    return unique


def make_trajectory_figure(trajectory, steps: list[int], frame_indices: list[int] | None = None, scale: int = 3):
    """One row per sample, one column per chosen frame, each column labelled "t = step".

    ``trajectory`` is (frames, batch, H, W[, 1]) in [0, 1] (the pipeline's ``output_type="np"`` trajectory) and
    ``steps`` the step of each frame (``trajectory_timesteps``).
    """
    frames = np.asarray(trajectory)
    if len(steps) != len(frames):
        raise ValueError(f"{len(steps)} step labels for {len(frames)} frames.")
    frame_indices = default_frame_indices(len(frames)) if frame_indices is None else list(frame_indices)
    batch = frames.shape[1]
    height, width = frames.shape[2] * scale, frames.shape[3] * scale
    padding, caption = 4, 16
    figure = PIL.Image.new(
        "L",
        (len(frame_indices) * (width + padding) + padding, caption + batch * (height + padding) + padding),
        BACKGROUND,
    )
    draw = ImageDraw.Draw(figure)
    font = _font(11)
    for column, index in enumerate(frame_indices):
        x = padding + column * (width + padding)
        draw.text((x + 1, 2), f"t={steps[index]}", fill=TEXT, font=font)
        for row, tile in enumerate(_as_uint8(frames[index])):
            figure.paste(tile.resize((width, height), PIL.Image.NEAREST), (x, caption + row * (height + padding)))
    return figure


def save_trajectory_gif(trajectory, steps: list[int], path: str | Path, scale: int = 4, duration_ms: int = 40):
    """Every frame of the trajectory as an animated GIF, each frame a grid of the batch labelled with its step."""
    frames = np.asarray(trajectory)
    images = []
    for frame, step in zip(frames, steps):
        grid = make_grid(frame, scale=scale)
        canvas = PIL.Image.new("L", (grid.width, grid.height + 16), BACKGROUND)
        canvas.paste(grid, (0, 16))
        ImageDraw.Draw(canvas).text((3, 2), f"t={step}", fill=TEXT, font=_font(12))
        images.append(canvas)
    images[0].save(
        path, save_all=True, append_images=images[1:], duration=duration_ms, loop=0, optimize=False, disposal=1
    )
    return len(images)
