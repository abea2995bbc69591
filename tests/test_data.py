import numpy as np
import pytest
import torch
from PIL import Image

from edgekit.config import DataConfig, DataSource
from edgekit.data import augment, load_data, synthetic_dataset
from edgekit.errors import DataError

CLASSES = ["cat", "dog", "frog"]


def make_folder(root, per_class=6, size=32):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class if split == "train" else 2):
                pixels = np.full((size, size, 3), 40 + 80 * label, np.uint8) + rng.integers(0, 20, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return root


def folder_config(root, tmp_path):
    return DataConfig(source=DataSource.folder, data_dir=str(root), val_size=3, cache_dir=str(tmp_path / "cache"))


def test_image_folder_loads_labels_and_is_cached(tmp_path):
    root = make_folder(tmp_path / "data")
    config = folder_config(root, tmp_path)
    data = load_data(config)
    assert data.classes == CLASSES
    assert data.train_x.dtype == torch.uint8 and data.train_x.shape[1:] == (3, 32, 32)
    assert len(data.train_y) + len(data.val_y) == 18 and len(data.test_y) == 6
    assert sorted(data.val_y.tolist()) == [0, 1, 2]  # class-balanced validation split
    # PNG is lossless: class k's pixels sit in [40 + 80k, 60 + 80k)
    assert int(data.test_x[data.test_y == 2].min()) >= 200
    cache_files = list((tmp_path / "cache").glob("*.pt"))
    assert len(cache_files) == 1
    # A second load reads the cache: removing an image would change the key, so the cache is keyed by content.
    again = load_data(config)
    assert again.fingerprint == data.fingerprint and torch.equal(again.train_x, data.train_x)
    (root / "train" / "cat" / "0000.png").unlink()
    assert load_data(config).fingerprint != data.fingerprint
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2


def test_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_data(folder_config(tmp_path / "nowhere", tmp_path))

    root = make_folder(tmp_path / "empty-class")
    for image in (root / "train" / "dog").iterdir():
        image.unlink()
    with pytest.raises(DataError, match="holds no images"):
        load_data(folder_config(root, tmp_path))

    root = make_folder(tmp_path / "corrupt")
    (root / "train" / "frog" / "0003.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match="0003.png"):
        load_data(folder_config(root, tmp_path))


def test_offline_cifar10_download_says_how_to_use_a_local_copy(tmp_path, monkeypatch):
    import edgekit.data as data_module

    monkeypatch.setattr(data_module, "CIFAR10_URL", "http://127.0.0.1:9/cifar-10-binary.tar.gz")  # a closed port
    with pytest.raises(DataError, match="--data-dir"):
        load_data(DataConfig(source=DataSource.cifar10, cache_dir=str(tmp_path)))
    assert not list(tmp_path.rglob("*.tar.gz")), "a failed download must not leave a partial archive"


def test_cifar10_binary_release_is_parsed_without_pickle(tmp_path):
    batches = tmp_path / "cifar10" / "cifar-10-batches-bin"
    batches.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        records = np.zeros((20, 3073), np.uint8)
        records[:, 0] = np.arange(20) % 10
        records[:, 1:] = rng.integers(0, 255, (20, 3072), dtype=np.uint8)
        records.tofile(batches / name)
    data = load_data(DataConfig(source=DataSource.cifar10, cache_dir=str(tmp_path), val_size=10))
    assert len(data.train_y) == 90 and len(data.test_y) == 20 and data.classes[0] == "airplane"
    first = np.fromfile(batches / "test_batch.bin", np.uint8).reshape(-1, 3073)[0]
    assert np.array_equal(data.test_x[0].numpy().ravel(), first[1:])


def test_synthetic_set_is_deterministic_and_seeded():
    a, b, c = synthetic_dataset(100, 20, seed=1), synthetic_dataset(100, 20, seed=1), synthetic_dataset(100, 20, seed=2)
    assert torch.equal(a["train_x"], b["train_x"]) and a["fingerprint"] == b["fingerprint"]
    assert a["fingerprint"] != c["fingerprint"]
    assert sorted(set(a["train_y"].tolist())) == list(range(10))


def test_augment_is_a_seeded_batch_operation():
    images = torch.rand(16, 3, 32, 32)
    first = augment(images, torch.Generator().manual_seed(0), cutout=8)
    second = augment(images, torch.Generator().manual_seed(0), cutout=8)
    assert first.shape == images.shape and torch.equal(first, second)
    assert not torch.equal(first, images)
    # With no padding and no cutout, every image is either itself or its mirror.
    flipped = augment(images, torch.Generator().manual_seed(3), pad=0)
    for original, out in zip(images, flipped):
        assert torch.equal(out, original) or torch.equal(out, original.flip(2))
