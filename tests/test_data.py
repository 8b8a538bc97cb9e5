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


def test_the_embedded_digits_are_cached_with_datasets_and_a_damaged_cache_is_rebuilt(tmp_path, monkeypatch):
    """Built once, saved by datasets' save_to_disk in HF_DATASETS_CACHE; a later process reads the same digits from
    there without building; a damaged cache is built again."""
    import datasets

    from ddpm_pipeline import data

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path))
    built = data._build_embedded_mnist()
    builds = []
    monkeypatch.setattr(data, "_build_embedded_mnist", lambda: builds.append(1) or built)

    def fresh_process_load():
        data.load_embedded_mnist.cache_clear()
        return data.load_embedded_mnist()

    try:
        first = fresh_process_load()
        assert builds == [1] and len(list(tmp_path.glob("ddpm-mnist-embedded-*"))) == 1
        second = fresh_process_load()
        assert builds == [1]  # read from the cache, not built
        for split in ("train", "test"):
            assert second[split]["label"] == built[split]["label"]
            assert [np.asarray(im).tobytes() for im in second[split]["image"][:50]] == [
                np.asarray(im).tobytes() for im in built[split]["image"][:50]
            ]
        (next(tmp_path.glob("ddpm-mnist-embedded-*")) / "dataset_dict.json").write_text("{oops")
        assert len(fresh_process_load()["train"]) == 4500 and builds == [1, 1]
        assert len(fresh_process_load()["train"]) == 4500 and builds == [1, 1]  # the rebuilt cache is read again
        assert first is not second
    finally:
        data.load_embedded_mnist.cache_clear()
