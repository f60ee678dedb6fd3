"""Tests for orchestrator.data: digits in memory; MNIST, CIFAR-10 and CelebA from tiny files
written here in their real on-disk formats and read through the real loading code."""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import pickle
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from sklearn.datasets import load_digits

from orchestrator.data import (
    DATASETS,
    DataConfig,
    DatasetNotFoundError,
    DatasetSplits,
    load_dataset,
    make_loader,
)

# ---------------------------------------------------------------- helpers


def _items(ds) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [ds[i] for i in range(len(ds))]


def _key(x: torch.Tensor, y: torch.Tensor) -> bytes:
    return x.numpy().tobytes() + int(y).to_bytes(2, "little")


def _keys(ds) -> Counter:
    return Counter(_key(x, y) for x, y in _items(ds))


def _check_item(x: torch.Tensor, y: torch.Tensor, channels: int, size: int) -> None:
    assert x.dtype == torch.float32 and tuple(x.shape) == (channels, size, size)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert y.dtype == torch.int64 and y.dim() == 0


def _write_idx(path: Path, array: np.ndarray, magic: int, compress: bool) -> None:
    """IDX file as distributed by LeCun: big-endian magic (2051 images / 2049 labels), dims."""
    payload = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload += array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)


def _mnist_fixture(root: Path, compress: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    arrays = {
        "train": rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
        "t10k": rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
    }
    for prefix, images in arrays.items():
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images, 2051, compress)
        labels = np.arange(len(images), dtype=np.uint8)  # label i <-> image i
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, 2049, compress)
    return arrays


def _cifar_fixture(root: Path) -> dict[str, np.ndarray]:
    """Python-version CIFAR batches: pickled dicts with 'data' (N, 3072) uint8, 'labels'."""
    rng = np.random.default_rng(1)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train = rng.integers(0, 256, (10, 3072), dtype=np.uint8)
    test = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    batches = {f"data_batch_{i + 1}": (train[2 * i : 2 * i + 2], [2 * i, 2 * i + 1]) for i in range(5)}
    batches["test_batch"] = (test, [0, 1, 2])
    for name, (data, labels) in batches.items():
        entry = {"batch_label": name, "data": data, "labels": labels}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    meta = {"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": 2}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return {"train": train, "test": test}


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def cifar_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict]:
    """Real CIFAR files, with torchvision's expected md5s replaced by the fixture's md5s (the
    genuine md5s cannot match fake data); the md5 checks themselves still run."""
    arrays = _cifar_fixture(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    cls = torchvision.datasets.CIFAR10
    train_list = [[name, _md5(folder / name)] for name, _ in cls.train_list]
    test_list = [[name, _md5(folder / name)] for name, _ in cls.test_list]
    meta = {**cls.meta, "md5": _md5(folder / "batches.meta")}
    monkeypatch.setattr(cls, "train_list", train_list)
    monkeypatch.setattr(cls, "test_list", test_list)
    monkeypatch.setattr(cls, "meta", meta)
    return tmp_path, arrays


_COLORS = [
    (200, 30, 30),
    (30, 200, 30),
    (30, 30, 200),
    (220, 220, 40),
    (40, 220, 220),
    (220, 40, 220),
    (128, 128, 128),
    (250, 250, 250),
]
_PARTITION = [0, 0, 0, 0, 1, 1, 2, 2]


def _celeba_fixture(root: Path) -> None:
    """torchvision's CelebA layout: aligned 178x218 JPEGs + list_eval_partition.txt."""
    images = root / "celeba" / "img_align_celeba"
    images.mkdir(parents=True)
    lines = []
    for i, (color, part) in enumerate(zip(_COLORS, _PARTITION, strict=True)):
        name = f"{i + 1:06d}.jpg"
        Image.new("RGB", (178, 218), color).save(images / name, quality=95)
        lines.append(f"{name} {part}\n")
    (root / "celeba" / "list_eval_partition.txt").write_text("".join(lines))


# ---------------------------------------------------------------- digits


def test_digits_shapes_values_and_sizes() -> None:
    s = load_dataset(DataConfig())
    assert isinstance(s, DatasetSplits)
    assert (s.name, s.num_classes, s.channels, s.image_size) == ("digits", 10, 1, 16)
    assert len(s.train) + len(s.val) + len(s.test) == 1797
    assert len(s.test) == 360 and len(s.val) == math.ceil(1437 * 0.1)
    for ds in (s.train, s.val, s.test):
        for i in (0, len(ds) - 1):
            _check_item(*ds[i], channels=1, size=16)
    labels = torch.stack([y for _, y in _items(s.train)])
    assert set(labels.tolist()) == set(range(10))


def test_digits_image_size_8_is_raw_and_splits_partition_the_data() -> None:
    s = load_dataset(DataConfig(image_size=8))
    bunch = load_digits()
    raw = (bunch.images / 16.0).astype(np.float32)
    expected = Counter(
        raw[i][None].tobytes() + int(bunch.target[i]).to_bytes(2, "little") for i in range(1797)
    )
    parts = [_keys(s.train), _keys(s.val), _keys(s.test)]
    assert parts[0] + parts[1] + parts[2] == expected  # every original used exactly once
    assert sum(sum(p.values()) for p in parts) == 1797


def test_digits_deterministic_for_seed_and_different_across_seeds() -> None:
    a, b = load_dataset(DataConfig(seed=3)), load_dataset(DataConfig(seed=3))
    c = load_dataset(DataConfig(seed=4))
    for name in ("train", "val", "test"):
        assert torch.equal(getattr(a, name).tensors[0], getattr(b, name).tensors[0])
    assert _keys(a.test) != _keys(c.test)


def test_digits_val_fraction_zero_and_limits() -> None:
    s = load_dataset(DataConfig(val_fraction=0.0))
    assert len(s.val) == 0 and len(s.train) + len(s.test) == 1797
    full = load_dataset(DataConfig(seed=1))
    lim = load_dataset(DataConfig(seed=1, limit_train=50, limit_test=20))
    again = load_dataset(DataConfig(seed=1, limit_train=50, limit_test=20))
    assert (len(lim.train), len(lim.val), len(lim.test)) == (50, 6, 20)  # val:train kept at 1:9
    assert _keys(lim.train) == _keys(again.train) and _keys(lim.test) == _keys(again.test)
    assert not _keys(lim.train) - _keys(full.train) and not _keys(lim.test) - _keys(full.test)
    other = load_dataset(DataConfig(seed=2, limit_train=50))
    assert _keys(other.train) != _keys(lim.train)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dataset": "imagenet"}, "dataset must be one of digits, mnist, cifar10, celeba"),
        ({"dataset": "mnist"}, "data_root.*--data-root DIR"),
        ({"val_fraction": 0.5}, r"val_fraction must be in \[0, 0.5\)"),
        ({"val_fraction": -0.1}, "val_fraction"),
        ({"limit_train": 0}, "limit_train must be None or a positive int"),
        ({"limit_test": -3}, "limit_test must be None or a positive int"),
        ({"image_size": 0}, "image_size must be None or a positive int"),
    ],
)
def test_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DataConfig(**kwargs)


def test_config_defaults_per_dataset(tmp_path: Path) -> None:
    assert DATASETS == ("digits", "mnist", "cifar10", "celeba")
    sizes = {d: DataConfig(dataset=d, data_root=str(tmp_path)).size for d in DATASETS}
    assert sizes == {"digits": 16, "mnist": 28, "cifar10": 32, "celeba": 64}


# ---------------------------------------------------------------- MNIST / CIFAR-10 / CelebA


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
def test_mnist_from_idx_files_round_trips_pixels(tmp_path: Path, compress: bool) -> None:
    arrays = _mnist_fixture(tmp_path, compress=compress)
    s = load_dataset(DataConfig(dataset="mnist", data_root=str(tmp_path)))
    assert (s.num_classes, s.channels, s.image_size) == (10, 1, 28)
    assert (len(s.train), len(s.val), len(s.test)) == (9, 1, 4)
    for split, ds in (("train", s.train), ("train", s.val), ("t10k", s.test)):
        for x, y in _items(ds):
            _check_item(x, y, channels=1, size=28)
            back = (x[0] * 255).round().to(torch.uint8).numpy()
            np.testing.assert_array_equal(back, arrays[split][int(y)])
    seen = sorted(int(y) for _, y in _items(s.train) + _items(s.val))
    assert seen == list(range(10))
    small = load_dataset(DataConfig(dataset="mnist", data_root=str(tmp_path), image_size=14))
    _check_item(*small.test[0], channels=1, size=14)


def test_cifar10_from_pickled_batches_round_trips_pixels(cifar_root: tuple[Path, dict]) -> None:
    root, arrays = cifar_root
    s = load_dataset(DataConfig(dataset="cifar10", data_root=str(root), val_fraction=0.2))
    assert (s.num_classes, s.channels, s.image_size, s.name) == (10, 3, 32, "cifar10")
    assert (len(s.train), len(s.val), len(s.test)) == (8, 2, 3)
    for split, ds in (("train", s.train), ("train", s.val), ("test", s.test)):
        for x, y in _items(ds):
            _check_item(x, y, channels=3, size=32)
            back = (x * 255).round().to(torch.uint8).numpy()
            np.testing.assert_array_equal(back, arrays[split][int(y)].reshape(3, 32, 32))
    other = load_dataset(DataConfig(dataset="cifar10", data_root=str(root), val_fraction=0.2, seed=5))
    assert {int(y) for _, y in _items(other.val)} != {int(y) for _, y in _items(s.val)}


def test_cifar10_md5_mismatch_is_reported_as_not_found(tmp_path: Path) -> None:
    _cifar_fixture(tmp_path)  # genuine md5s expected: the fake batches fail the check
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py"):
        load_dataset(DataConfig(dataset="cifar10", data_root=str(tmp_path)))


def test_celeba_from_jpegs_and_partition_file(tmp_path: Path) -> None:
    _celeba_fixture(tmp_path)
    s = load_dataset(DataConfig(dataset="celeba", data_root=str(tmp_path)))
    assert (s.num_classes, s.channels, s.image_size, s.name) == (0, 3, 64, "celeba")
    assert (len(s.train), len(s.val), len(s.test)) == (4, 2, 2)
    got = [(x, y) for ds in (s.train, s.val, s.test) for x, y in _items(ds)]
    for (x, y), color in zip(got, _COLORS, strict=True):
        _check_item(x, y, channels=3, size=64)
        assert int(y) == 0
        expected = torch.tensor(color, dtype=torch.float32)[:, None, None] / 255
        assert torch.allclose(x, expected.expand_as(x), atol=0.03)
    small = load_dataset(DataConfig(dataset="celeba", data_root=str(tmp_path), image_size=32))
    _check_item(*small.train[0], channels=3, size=32)


def test_celeba_missing_listed_image(tmp_path: Path) -> None:
    _celeba_fixture(tmp_path)
    os.remove(tmp_path / "celeba" / "img_align_celeba" / "000005.jpg")
    with pytest.raises(DatasetNotFoundError, match=r"000005\.jpg"):
        load_dataset(DataConfig(dataset="celeba", data_root=str(tmp_path)))


@pytest.mark.parametrize(
    ("dataset", "subdir"),
    [("mnist", "MNIST/raw"), ("cifar10", "cifar-10-batches-py"), ("celeba", "celeba")],
)
def test_missing_files_raise_clear_error(tmp_path: Path, dataset: str, subdir: str) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(DataConfig(dataset=dataset, data_root=str(tmp_path)))
    message = str(info.value)
    assert os.path.join(str(tmp_path), *subdir.split("/")) in message
    assert "download" in message
    assert isinstance(info.value, FileNotFoundError)
    assert info.value.__cause__ is None and info.value.__suppress_context__


# ---------------------------------------------------------------- loaders and pickling


def test_make_loader_is_deterministic() -> None:
    ds = load_dataset(DataConfig(limit_train=64)).train

    def order(seed: int, shuffle: bool = True) -> list[int]:
        loader = make_loader(ds, batch_size=16, shuffle=shuffle, seed=seed)
        return [k for xb, _ in loader for k in xb.flatten(1).sum(1).tolist()]

    assert order(0) == order(0)
    assert order(0) != order(1)
    sequential = [float(ds[i][0].sum()) for i in range(len(ds))]
    assert order(0, shuffle=False) == pytest.approx(sequential)
    xb, yb = next(iter(make_loader(ds, batch_size=10, shuffle=True, drop_last=True)))
    assert xb.shape == (10, 1, 16, 16) and yb.dtype == torch.int64
    assert len(make_loader(ds, batch_size=10, shuffle=False, drop_last=True)) == 6
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(ds, batch_size=0, shuffle=False)


def test_splits_pickle_for_ray_actors(tmp_path: Path, cifar_root: tuple[Path, dict]) -> None:
    _mnist_fixture(tmp_path / "m")
    _celeba_fixture(tmp_path / "c")
    configs = [
        DataConfig(limit_train=10),
        DataConfig(dataset="mnist", data_root=str(tmp_path / "m"), image_size=14),
        DataConfig(dataset="cifar10", data_root=str(cifar_root[0])),
        DataConfig(dataset="celeba", data_root=str(tmp_path / "c")),
    ]
    for config in configs:
        s = load_dataset(config)
        for ds in (s.train, s.test):
            clone = pickle.loads(pickle.dumps(ds))
            assert torch.equal(clone[0][0], ds[0][0]) and torch.equal(clone[0][1], ds[0][1])
