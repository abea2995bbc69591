"""Data: CIFAR-10 (download), an ImageFolder tree, or a synthetic set, as cached uint8 tensors.

Images are decoded once into a uint8 tensor file keyed by a hash of the source's content, so
no epoch decodes a JPEG. Augmentation runs on whole batches on the training device.

Pixels leave this module as uint8 NCHW; `to_unit_float` scales them to [0, 1], which is what
the model takes (it normalizes inside itself, see model.py).
"""

from __future__ import annotations

import hashlib
import math
import os
import tarfile
import urllib.error
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .artifacts import atomic_path, atomic_torch_save
from .config import DataConfig, DataSource
from .errors import DataError
from .report import Reporter, quiet
from .timing import batch_slices

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
CACHE_FORMAT = "edgekit-data/1"
CIFAR10_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin",)


@dataclass
class DataSplits:
    train_x: torch.Tensor  # uint8 [N, 3, 32, 32]
    train_y: torch.Tensor  # int64 [N]
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    source: str  # human-readable origin
    fingerprint: str  # hash of the decoded pixels of the whole source (train + test)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def describe(self) -> dict:
        return {"source": self.source, "fingerprint": self.fingerprint, "classes": self.classes,
                "train": len(self.train_y), "val": len(self.val_y), "test": len(self.test_y)}


def to_unit_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0)


def load_data(config: DataConfig, reporter: Reporter = quiet) -> DataSplits:
    """Decode (or read from cache) the source, then carve the seeded validation split."""
    config.validate()
    if config.source is DataSource.synthetic:
        raw = synthetic_dataset(config.synthetic_train, config.synthetic_test, seed=config.seed)
        origin = f"synthetic(seed={config.seed}, train={config.synthetic_train}, test={config.synthetic_test})"
    elif config.source is DataSource.folder:
        if config.data_dir is None:
            raise DataError("--source folder needs a directory", "pass --data-dir DIR holding train/ and test/")
        raw = _cached(Path(config.data_dir), config.cache_dir, _read_image_folder, reporter)
        origin = f"folder:{Path(config.data_dir).resolve()}"
    else:
        root = Path(config.data_dir) if config.data_dir else Path(config.cache_dir) / "cifar10"
        raw = _cached(root, config.cache_dir, _read_cifar10_binary, reporter)
        origin = f"cifar10:{root.resolve()}"
    return _split(raw, config, origin)


def _split(raw: dict, config: DataConfig, origin: str) -> DataSplits:
    train_x, train_y = raw["train_x"], raw["train_y"]
    classes = list(raw["classes"])
    if len(classes) < 2:
        raise DataError(f"the data has {len(classes)} class ({', '.join(classes)}); a classifier needs at least two",
                        "add a second class folder (train/<class>/ and test/<class>/)")
    per_class_val = config.val_size // len(classes)
    if per_class_val < 1:
        raise DataError(f"--val-size {config.val_size} is fewer than one image per class ({len(classes)} classes)",
                        f"use --val-size {len(classes)} or more")
    generator = torch.Generator().manual_seed(config.seed)
    val_idx, train_idx = [], []
    for label in range(len(classes)):
        members = torch.nonzero(train_y == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        if len(members) <= per_class_val:
            raise DataError(f"class '{classes[label]}' has {len(members)} training images, too few for a "
                            f"validation split of {per_class_val} per class", "lower --val-size or add images")
        val_idx.append(members[:per_class_val])
        rest = members[per_class_val:]
        if config.train_per_class:
            rest = rest[: config.train_per_class]
        train_idx.append(rest)
    train_sel = torch.cat(train_idx).sort().values
    val_sel = torch.cat(val_idx).sort().values
    test_x, test_y = raw["test_x"], raw["test_y"]
    if config.test_limit:
        test_x, test_y = test_x[: config.test_limit], test_y[: config.test_limit]
    return DataSplits(train_x[train_sel], train_y[train_sel], train_x[val_sel], train_y[val_sel],
                      test_x, test_y, classes, origin, raw["fingerprint"])


def load_data_for_checkpoint(checkpoint, data_config: DataConfig | None = None,
                             reporter: Reporter = quiet) -> DataSplits:
    """The data a checkpoint was trained on (or `data_config`), refused if its classes differ."""
    from .config import data_config_from_dict

    data = load_data(data_config or data_config_from_dict(checkpoint.extra.get("data_config")), reporter)
    if checkpoint.classes and list(checkpoint.classes) != list(data.classes):
        raise DataError(f"the checkpoint was trained on classes {checkpoint.classes}, the data has {data.classes}",
                        "pass the data the model was trained on (--source/--data-dir)")
    return data


# ---- caching ---------------------------------------------------------------------------------


def _content_key(root: Path, files: list[Path]) -> str:
    """Hash of exactly the files the loader decodes: each one's path as the loader names it (which
    carries the label) and its bytes, read through any links.

    A walk of the folder is not enough: it does not follow linked sub-folders, so two folders
    whose class folders link to different images would share one cache and report each other's
    accuracy. Bytes, not paths or mtimes, so a moved or renamed copy of the same data reuses it."""
    digest = hashlib.sha256(b"edgekit-content-key/2\n")
    for path in files:
        try:
            name = str(path.relative_to(root))
        except ValueError:
            name = str(path)
        digest.update(name.encode() + b"\0")
        try:
            with open(path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                digest.update(size.to_bytes(8, "little"))
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
        except OSError as exc:
            raise DataError(f"cannot read {path}: {exc.strerror or exc}", "check the file and its permissions") from exc
    return digest.hexdigest()


def _files_read_by(reader, root: Path) -> list[Path]:
    if reader is _read_cifar10_binary:
        return [root / name for name in CIFAR10_FILES if (root / name).exists()]
    train_files, _, classes = _list_split(root / "train", None)
    test_files, _, _ = _list_split(root / "test", classes)
    return train_files + test_files


def pixel_fingerprint(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _cached(root: Path, cache_dir: str | Path, reader, reporter: Reporter) -> dict:
    if reader is _read_cifar10_binary:
        root = _ensure_cifar10(root, reporter)
    elif not root.is_dir():
        raise DataError(f"data directory not found: {root}",
                        "pass --data-dir pointing at a folder with train/<class>/ and test/<class>/ images")
    key = _content_key(root, _files_read_by(reader, root))
    cache_file = Path(cache_dir) / f"{reader.__name__.strip('_')}-{key[:20]}.pt"
    if cache_file.exists():
        try:
            cached = torch.load(cache_file, map_location="cpu", weights_only=True)
            if cached.get("format") == CACHE_FORMAT:
                reporter.info(f"data: decoded cache {cache_file}")
                return cached
        except Exception:
            reporter.info(f"data: cache {cache_file} unreadable, decoding again")
    raw = reader(root, reporter)
    raw["format"] = CACHE_FORMAT
    raw["fingerprint"] = pixel_fingerprint(raw["train_x"], raw["test_x"])
    atomic_torch_save(raw, cache_file)
    reporter.info(f"data: cached decoded pixels in {cache_file}")
    return raw


# ---- ImageFolder -----------------------------------------------------------------------------


def _decode(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if image.size != (32, 32):
                image = image.resize((32, 32), Image.BILINEAR)
            return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot decode image {path}: {exc}", "remove or replace the corrupt file") from exc


def _list_split(split_dir: Path, classes: list[str] | None) -> tuple[list[Path], list[int], list[str]]:
    """The image files of one split, in the order the loader decodes them, with their labels."""
    if not split_dir.is_dir():
        raise DataError(f"missing split folder {split_dir}", "an image folder needs train/<class>/ and test/<class>/")
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not found:
        raise DataError(f"no class folders in {split_dir}", "put each class's images in its own sub-folder")
    if classes is not None and found != classes:
        raise DataError(f"{split_dir} has classes {found}, but train/ has {classes}",
                        "train/ and test/ need the same class folders")
    files, labels = [], []
    for label, name in enumerate(found):
        images = sorted(p for p in (split_dir / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DataError(f"class folder {split_dir / name} holds no images",
                            f"add images ({', '.join(sorted(IMAGE_SUFFIXES))}) or remove the folder")
        files += images
        labels += [label] * len(images)
    return files, labels, found


def _read_split(split_dir: Path, classes: list[str] | None, reporter: Reporter) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    files, labels, found = _list_split(split_dir, classes)
    pixels = []
    with reporter.progress(f"decode {split_dir.name}", total=len(files)) as bar:
        workers = max(1, min(os.cpu_count() or 1, 8))
        if len(files) < 2000 or workers == 1:
            for path in files:
                pixels.append(_decode(path))
                bar.advance(1)
        else:
            with ProcessPoolExecutor(workers) as pool:
                for array in pool.map(_decode, files, chunksize=256):
                    pixels.append(array)
                    bar.advance(1)
    return torch.from_numpy(np.stack(pixels)), torch.tensor(labels, dtype=torch.int64), found


def _read_image_folder(root: Path, reporter: Reporter) -> dict:
    train_x, train_y, classes = _read_split(root / "train", None, reporter)
    test_x, test_y, _ = _read_split(root / "test", classes, reporter)
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y, "classes": classes}


# ---- CIFAR-10 --------------------------------------------------------------------------------
# The binary release, parsed as raw bytes: the Python release is pickled, and edgekit never
# unpickles downloaded files.


def _ensure_cifar10(root: Path, reporter: Reporter) -> Path:
    batches = root / "cifar-10-batches-bin"
    if batches.is_dir():
        return batches
    archive = root / "cifar-10-binary.tar.gz"
    if not archive.exists():
        reporter.info(f"data: downloading CIFAR-10 from {CIFAR10_URL} into {root}")
        try:
            with atomic_path(archive) as tmp:
                urllib.request.urlretrieve(CIFAR10_URL, tmp)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise DataError(
                f"cannot download CIFAR-10 ({exc.__class__.__name__}: {getattr(exc, 'reason', exc)})",
                f"offline? put cifar-10-binary.tar.gz in {root}, or use a local image folder: "
                "--source folder --data-dir DIR (e.g. the extracted cifar10-jpg with train/ and test/)") from exc
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    if md5 != CIFAR10_MD5:
        raise DataError(f"{archive} has md5 {md5}, expected {CIFAR10_MD5}", "delete it and download again")
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    return batches


def _read_cifar10_binary(batches: Path, reporter: Reporter) -> dict:
    def read(names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        records = []
        for name in names:
            path = batches / name
            if not path.exists():
                raise DataError(f"missing CIFAR-10 file {path}", "delete the folder and download again")
            records.append(np.fromfile(path, dtype=np.uint8).reshape(-1, 3073))
        data = np.concatenate(records)
        return torch.from_numpy(data[:, 1:].reshape(-1, 3, 32, 32).copy()), torch.from_numpy(data[:, 0].astype(np.int64))

    train_x, train_y = read(list(CIFAR10_FILES[:5]))
    test_x, test_y = read([CIFAR10_FILES[5]])
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y, "classes": CIFAR10_CLASSES}


# ---- synthetic -------------------------------------------------------------------------------

SYNTHETIC_CLASSES = ["disk", "square", "diamond", "ring", "cross", "h-stripes", "v-stripes", "d-stripes",
                     "checker", "triangle"]


def synthetic_images(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Draw one shape or texture per image; position, size, colours and noise vary per image."""
    n = len(labels)
    coords = torch.arange(32, dtype=torch.float32)
    yy, xx = coords.view(1, 32, 1), coords.view(1, 1, 32)

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return (lo + (hi - lo) * torch.rand(n, generator=generator)).view(n, 1, 1)

    cx, cy, size = uniform(10, 22), uniform(10, 22), uniform(6, 10)
    period, phase = uniform(4, 8), uniform(0, 2 * math.pi)
    dx, dy = xx - cx, yy - cy
    radius = torch.sqrt(dx**2 + dy**2)
    wave = 2 * math.pi / period
    masks = torch.stack([
        radius < size,
        torch.maximum(dx.abs(), dy.abs()) < size * 0.85,
        dx.abs() + dy.abs() < size,
        (radius - size).abs() < 1.6,
        ((dx.abs() < 2) | (dy.abs() < 2)) & (torch.maximum(dx.abs(), dy.abs()) < size),
        torch.sin(yy * wave + phase).expand(n, 32, 32) > 0,
        torch.sin(xx * wave + phase).expand(n, 32, 32) > 0,
        torch.sin((xx + yy) * wave / math.sqrt(2) + phase) > 0,
        (torch.sin(xx * wave + phase) * torch.sin(yy * wave + phase)) > 0,
        (dy > -size) & (dy < size * 0.8) & (dx.abs() < (dy + size) * 0.55),
    ], dim=1)  # [n, 10, 32, 32]
    mask = masks[torch.arange(n), labels].unsqueeze(1).float()
    foreground = torch.rand(n, 3, 1, 1, generator=generator)
    background = (foreground + 0.35 + 0.3 * torch.rand(n, 3, 1, 1, generator=generator)) % 1.0
    image = mask * foreground + (1 - mask) * background
    image = image + 0.08 * torch.randn(n, 3, 32, 32, generator=generator)
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def synthetic_dataset(train: int, test: int, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    train_y = torch.arange(train) % 10
    test_y = torch.arange(test) % 10
    train_x = synthetic_images(train_y, generator)
    test_x = synthetic_images(test_y, generator)
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y,
            "classes": SYNTHETIC_CLASSES, "fingerprint": pixel_fingerprint(train_x, test_x)}


# ---- batches and augmentation ----------------------------------------------------------------


def augment(images: torch.Tensor, generator: torch.Generator, pad: int = 4, flip: bool = True,
            cutout: int = 0, cutout_fill: float | tuple[float, ...] = 0.0) -> torch.Tensor:
    """Random crop with `pad` pixels of reflection padding, horizontal flip, optional Cutout.

    Cutout blanks one `cutout` x `cutout` square per image, placed uniformly so that it lies
    wholly inside the image (the airbench baselines' variant: every image loses the same area),
    with `cutout_fill` (a value, or one per channel).

    Works on a whole float batch on whatever device it lives on; the random numbers come from
    a CPU generator so a run is reproducible (and resumable) whatever the device.
    """
    n, _, h, w = images.shape
    device = images.device
    if pad:
        padded = torch.nn.functional.pad(images, (pad, pad, pad, pad), mode="reflect")
        off_y = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(device)
        off_x = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(device)
        channels = images.shape[1]
        rows = (off_y.view(n, 1) + torch.arange(h, device=device)).view(n, 1, h, 1)
        cols = (off_x.view(n, 1) + torch.arange(w, device=device)).view(n, 1, 1, w)
        images = padded.gather(2, rows.expand(n, channels, h, w + 2 * pad)).gather(3, cols.expand(n, channels, h, w))
    if flip:
        flip_mask = (torch.rand(n, generator=generator) < 0.5).to(device).view(n, 1, 1, 1)
        images = torch.where(flip_mask, images.flip(3), images)
    if cutout:
        size = min(cutout, h, w)
        top = torch.randint(0, h - size + 1, (n,), generator=generator).to(device).view(n, 1, 1, 1)
        left = torch.randint(0, w - size + 1, (n,), generator=generator).to(device).view(n, 1, 1, 1)
        ys = torch.arange(h, device=device).view(1, 1, h, 1)
        xs = torch.arange(w, device=device).view(1, 1, 1, w)
        hole = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)
        fill = torch.as_tensor(cutout_fill, dtype=images.dtype, device=device).reshape(1, -1, 1, 1)
        images = torch.where(hole, fill, images)
    return images


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator | None = None,
            drop_last: bool = False):
    """Yield (x, y) slices, shuffled when a generator is given."""
    n = len(y)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    # a set smaller than one batch is still one (short) batch, drop_last or not
    for rows in batch_slices(n, batch_size, drop_last=drop_last and n >= batch_size):
        index = order[rows]
        yield x[index.to(x.device)], y[index.to(y.device)]
