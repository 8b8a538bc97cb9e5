"""Flag types for every command-line tool of the package and the benchmarks: each refuses a bad value with what it
must be, so argparse names the flag and nothing starts before the arguments are right."""

import argparse
import io
import math
import os
import warnings
from pathlib import Path

import PIL.Image

from .constants import FULL_CHAIN


def whole_number_at_least(minimum: int, requirement: str):
    """A flag type: a whole number of at least ``minimum``; ``requirement`` says so in the error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"takes a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{requirement}, got {value}")
        return value

    return parse


positive_int = whole_number_at_least(1, "must be at least 1")
non_negative_int = whole_number_at_least(0, "must be 0 or more")


def port_number(text: str) -> int:
    """A TCP port to serve on: 1-65535."""
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is at most 65535, got {value}")
    return value


def inference_steps(text: str):
    """A step count, or `full` for the whole training chain."""
    if text.strip().lower() in ("full", "none"):
        return FULL_CHAIN
    return positive_int(text)


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text!r}")
    return value


def fraction_flag(text: str) -> float:
    """A rate or margin between 0 and 1."""
    value = finite_float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text!r}")
    return value


def number_list(accepts, requirement: str, example: str):
    """A flag type: finite numbers separated by commas, each one ``accepts`` (``requirement`` says which)."""

    def parse(text: str) -> list[float]:
        values = []
        for item in text.split(","):
            try:
                value = float(item)
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"takes numbers separated by commas, e.g. {example}; got {text!r}"
                ) from None
            if not math.isfinite(value) or not accepts(value):
                raise argparse.ArgumentTypeError(f"takes {requirement}; {item!r} is not one")
            values.append(value)
        return values

    return parse


scale_list = number_list(lambda value: value >= 0, "finite guidance scales >= 0 (1 = no guidance)", "1.5,2,2.5")
positive_list = number_list(lambda value: value > 0, "finite numbers above 0", "7,15,30")
_whole_numbers = number_list(lambda value: value >= 1 and value == int(value), "whole numbers of at least 1", "10,20")


def inference_step_list(text: str) -> list[int]:
    """--steps 10,20: respaced sampling step counts, each a whole number of at least 1."""
    return [int(value) for value in _whole_numbers(text)]


def parse_guidance_interval(text: str) -> tuple[float, ...]:
    """--guidance_interval LOW,HIGH as floats; the pipeline checks that 0 <= LOW < HIGH <= 1."""
    try:
        return tuple(float(bound) for bound in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes two fractions LOW,HIGH, e.g. 0.6,1; got {text!r}") from None


def digit_list(text: str) -> list[int]:
    try:
        digits = [int(d) for d in text.split(",") if d.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes digits separated by commas, e.g. 0,1,7; got {text!r}") from None
    if not digits or any(not 0 <= d <= 9 for d in digits):
        raise argparse.ArgumentTypeError(f"must list digits between 0 and 9, e.g. 0,1,7; got {text!r}")
    return digits


def step_list(text: str) -> list[int]:
    try:
        steps = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"takes step numbers separated by commas, e.g. 1000,500,0; got {text!r}"
        ) from None
    if any(step < 0 for step in steps):
        raise argparse.ArgumentTypeError(f"steps run from T (noise) down to 0 (the digit); got {text!r}")
    return steps


def _writes_grey(extension: str) -> bool:
    """Whether Pillow can write a one-channel (mode "L") image in the format of ``extension``."""
    try:
        with warnings.catch_warnings():  # a format Pillow will drop one day still writes today
            warnings.simplefilter("ignore", DeprecationWarning)
            PIL.Image.new("L", (8, 8)).save(io.BytesIO(), format=PIL.Image.registered_extensions()[extension])
    except Exception:  # noqa: BLE001 - any failure: this format does not take a grey image
        return False
    return True


GREY_IMAGE_SUFFIXES = tuple(
    sorted(s for s, f in PIL.Image.registered_extensions().items() if f in PIL.Image.SAVE and _writes_grey(s))
)


def writable_file(*suffixes: str):
    """An output path whose folder exists (or can be made) and whose extension is one of ``suffixes``."""

    def check(text: str) -> Path:
        path = Path(text)
        if path.suffix.lower() not in suffixes:
            raise argparse.ArgumentTypeError(f"must end in {' or '.join(suffixes)}, got {text!r}")
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"{text!r} is a folder; give a file name")
        existing = next((p for p in path.parents if p.exists()), Path("."))
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise argparse.ArgumentTypeError(f"cannot write {text!r}: {str(existing)!r} is not a writable folder")
        return path

    return check


IMAGE_SUFFIXES = tuple(sorted({s for s, f in PIL.Image.registered_extensions().items() if f in PIL.Image.SAVE}))


def saved_pipeline_folder(text: str) -> Path:
    """A local folder holding a saved pipeline (model_index.json), as a training run's output folder does."""
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is not a folder; give a training run's output folder")
    if not (path / "model_index.json").is_file():
        hint = (
            "it is a training checkpoint; give the run's output folder (its parent), which holds the saved pipeline"
            if path.name.startswith("checkpoint-")
            else "it holds no saved pipeline (model_index.json); give a training run's output folder"
        )
        raise argparse.ArgumentTypeError(f"{text!r}: {hint}")
    return path


def guidance_intervals(text: str) -> list[tuple[float, float]]:
    """``0.4-0.8,0.4-1.0`` -> [(0.4, 0.8), (0.4, 1.0)]: fractions of the T steps, 0 <= LOW < HIGH <= 1."""
    intervals = []
    for item in text.split(","):
        try:
            low, high = (float(bound) for bound in item.split("-"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r} is not LOW-HIGH (e.g. 0.4-1.0)") from None
        if not 0.0 <= low < high <= 1.0:
            raise argparse.ArgumentTypeError(f"{item!r} needs 0 <= LOW < HIGH <= 1 (fractions of the T steps)")
        intervals.append((low, high))
    return intervals


def writable_folder(text: str) -> Path:
    """An output folder: absent (it will be made) or a folder, below a folder this user may write in."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file; give a folder")
    existing = next((p for p in [path, *path.parents] if p.exists()), Path("."))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write in {str(existing)!r}")
    return path


def step_counts(text: str) -> list[int]:
    """Sampling step counts separated by commas, each at least 1."""
    return [positive_int(item) for item in text.split(",") if item.strip()] or positive_int(text)
