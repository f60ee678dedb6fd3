"""Datasets for the training tasks: classification (adversarial) and images (generative).

What: :func:`load_dataset` turns a validated :class:`DataConfig` into :class:`DatasetSplits`
(train / val / test datasets yielding ``(image, label)`` with ``image`` a float32 tensor in
[0, 1] of shape (C, H, W) and ``label`` a 0-dim int64 tensor), and :func:`make_loader` wraps
one in a deterministically shuffled ``DataLoader``.

Why: every trial of a sweep runs in its own Ray actor, so the data must be reproducible
from (config, seed) alone, picklable (no lambdas; module-level callables only) and loaded
with ``num_workers=0``. ``digits`` (scikit-learn's bundled 8x8 digits, upsampled to 16x16
so an MDEQ has two resolutions) needs no files; MNIST and CIFAR-10 are read through
torchvision from their usual on-disk layout. CelebA is read by this module itself from
torchvision's layout (``<root>/celeba/img_align_celeba/*.jpg`` and
``<root>/celeba/list_eval_partition.txt``): torchvision's ``CelebA`` insists on four other
annotation files with exact md5s that image-only tasks never use.

Example::

    import torch
    from orchestrator.data import DataConfig, load_dataset, make_loader

    splits = load_dataset(DataConfig(dataset="digits", limit_train=256))
    x, y = next(iter(make_loader(splits.train, batch_size=32, shuffle=True, seed=0)))
    assert x.shape == (32, 1, 16, 16) and y.dtype == torch.int64
"""

from __future__ import annotations

import gzip
import math
import os
import shutil
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

__all__ = [
    "DATASETS",
    "DataConfig",
    "DatasetNotFoundError",
    "DatasetSplits",
    "load_dataset",
    "make_loader",
]

DATASETS: tuple[str, ...] = ("digits", "mnist", "cifar10", "celeba")
_DEFAULT_SIZE = {"digits": 16, "mnist": 28, "cifar10": 32, "celeba": 64}
_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_CIFAR_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
_CELEBA_CROP = 148  # center crop of the 178x218 aligned faces before resizing (common recipe)


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing or corrupted under ``data_root``; the message says where
    they are expected and how to get them."""


@dataclass(frozen=True)
class DataConfig:
    """Which dataset to load, and how to split and subsample it.

    ``data_root`` is required for every dataset except ``digits``. ``image_size=None`` uses
    the dataset default (digits 16, mnist 28, cifar10 32, celeba 64). ``val_fraction`` of
    the training set is held out as validation (CelebA uses its official "valid" partition
    instead). ``limit_train`` caps the training split and, in proportion, the validation
    split; ``limit_test`` caps the test split; both pick a seeded random subset.
    """

    dataset: str = "digits"
    data_root: str | None = None
    image_size: int | None = None
    download: bool = False
    val_fraction: float = 0.1
    seed: int = 0
    limit_train: int | None = None
    limit_test: int | None = None

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {self.dataset!r}")
        if self.dataset != "digits" and not self.data_root:
            raise ValueError(
                f"data_root is required for dataset {self.dataset!r}: pass --data-root DIR "
                "(the directory holding the dataset files)"
            )
        if self.image_size is not None and not _positive_int(self.image_size):
            raise ValueError(f"image_size must be None or a positive int; got {self.image_size!r}")
        if not 0.0 <= self.val_fraction < 0.5:
            raise ValueError(f"val_fraction must be in [0, 0.5); got {self.val_fraction!r}")
        for name in ("limit_train", "limit_test"):
            value = getattr(self, name)
            if value is not None and not _positive_int(value):
                raise ValueError(f"{name} must be None or a positive int; got {value!r}")

    @property
    def size(self) -> int:
        """The image side length actually used (``image_size`` or the dataset default)."""
        return self.image_size if self.image_size is not None else _DEFAULT_SIZE[self.dataset]


@dataclass
class DatasetSplits:
    """Train / val / test datasets of ``(float32 image (C, H, W) in [0, 1], int64 label)``.

    ``num_classes`` is 0 for unlabelled image datasets (CelebA; labels are all 0).
    """

    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    channels: int
    image_size: int
    name: str


def _to_int64(target: int) -> torch.Tensor:
    """Target transform: a class index as a 0-dim int64 tensor (module-level: picklable)."""
    return torch.tensor(int(target), dtype=torch.int64)


def _permutation(n: int, seed: int, stream: int) -> torch.Tensor:
    """A seeded permutation of ``range(n)``; ``stream`` keeps different uses independent."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + stream)
    return torch.randperm(n, generator=gen)


def _limit(dataset: Dataset, limit: int | None, seed: int, stream: int) -> Dataset:
    """A seeded random subset of at most ``limit`` items (the dataset itself if no limit)."""
    n = len(dataset)  # type: ignore[arg-type]
    if limit is None or limit >= n:
        return dataset
    keep = torch.sort(_permutation(n, seed, stream)[:limit]).values
    return Subset(dataset, keep.tolist())


def _val_limit(config: DataConfig) -> int | None:
    """Validation cap that keeps val:train at val_fraction when ``limit_train`` is set."""
    if config.limit_train is None:
        return None
    frac = config.val_fraction
    return max(1, math.ceil(config.limit_train * frac / (1.0 - frac))) if frac > 0 else None


def _not_found(what: str, where: str, files: str, how: str, reason: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"{what} not found or corrupted in {where}: expected {files} there. To get them, run "
        f"once with download=True (--download) on a machine with internet access, or {how}. "
        f"(Reason: {reason.strip().splitlines()[0] if reason.strip() else 'missing files'})"
    )


def _digits(config: DataConfig) -> DatasetSplits:
    """scikit-learn's bundled 1797 8x8 digits (values 0..16), scaled to [0, 1], resized."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if config.size != 8:
        images = F.interpolate(
            images, size=(config.size, config.size), mode="bilinear", align_corners=False
        ).clamp_(0.0, 1.0)
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    idx = list(range(len(labels)))
    rest, test = train_test_split(idx, test_size=0.2, random_state=config.seed, stratify=bunch.target)
    if config.val_fraction > 0:
        train, val = train_test_split(
            rest,
            test_size=config.val_fraction,
            random_state=config.seed,
            stratify=bunch.target[rest],
        )
    else:
        train, val = rest, []

    def part(ix: list[int]) -> TensorDataset:
        t = torch.tensor(sorted(ix), dtype=torch.int64)
        return TensorDataset(images[t], labels[t])

    return DatasetSplits(part(train), part(val), part(test), 10, 1, config.size, "digits")


def _gunzip_missing(raw: str) -> None:
    """Decompress ``<name>.gz`` MNIST files whose uncompressed copy is missing (atomically)."""
    for name in _MNIST_FILES:
        dst, src = os.path.join(raw, name), os.path.join(raw, name + ".gz")
        if not os.path.isfile(dst) and os.path.isfile(src):
            tmp = f"{dst}.tmp{os.getpid()}"
            with gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout)
            os.replace(tmp, dst)


def _torchvision(config: DataConfig) -> DatasetSplits:
    """MNIST or CIFAR-10 through torchvision; validation carved from train by seed."""
    from torchvision import datasets, transforms

    root = os.path.abspath(os.path.expanduser(str(config.data_root)))
    steps: list[object] = []
    native = _DEFAULT_SIZE[config.dataset]
    if config.size != native:
        steps.append(transforms.Resize((config.size, config.size), antialias=True))
    steps.append(transforms.ToTensor())
    tf = transforms.Compose(steps)
    if config.dataset == "mnist":
        cls, channels = datasets.MNIST, 1
        where = os.path.join(root, "MNIST", "raw")
        files = ", ".join(_MNIST_FILES) + " (uncompressed, or as .gz: decompressed on load)"
        how = "copy the four idx files from yann.lecun.com/exdb/mnist into that directory"
        if os.path.isdir(where):
            _gunzip_missing(where)
    else:
        cls, channels = datasets.CIFAR10, 3
        where = os.path.join(root, "cifar-10-batches-py")
        files = ", ".join(_CIFAR_FILES)
        how = f"extract cifar-10-python.tar.gz (the Python version) into {root}"
    try:
        full_train = cls(root, train=True, transform=tf, target_transform=_to_int64, download=config.download)
        test = cls(root, train=False, transform=tf, target_transform=_to_int64, download=config.download)
    except (RuntimeError, OSError) as err:
        what = "MNIST" if config.dataset == "mnist" else "CIFAR-10"
        raise _not_found(what, where, files, how, str(err)) from None
    n = len(full_train)
    n_val = round(n * config.val_fraction)
    order = _permutation(n, config.seed, 0)
    val: Dataset = Subset(full_train, torch.sort(order[:n_val]).values.tolist())
    train: Dataset = Subset(full_train, torch.sort(order[n_val:]).values.tolist())
    return DatasetSplits(train, val, test, 10, channels, config.size, config.dataset)


class _CelebAImages(Dataset):
    """Aligned CelebA faces of one official partition, center-cropped and resized.

    Read directly from torchvision's layout with PIL: ``<root>/celeba/img_align_celeba/``
    and ``<root>/celeba/list_eval_partition.txt`` (lines ``000001.jpg 0``; 0 train,
    1 valid, 2 test). Yields ``(image (3, size, size) in [0, 1], tensor(0))``.
    """

    def __init__(self, root: str, partition: int, size: int) -> None:
        self.folder = os.path.join(root, "celeba")
        self.image_dir = os.path.join(self.folder, "img_align_celeba")
        self.size = size
        self.files: list[str] = []
        with open(os.path.join(self.folder, "list_eval_partition.txt")) as fh:
            for line in fh:
                parts = line.split()
                if len(parts) == 2 and int(parts[1]) == partition:
                    self.files.append(parts[0])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        with Image.open(os.path.join(self.image_dir, self.files[index])) as img:
            img = img.convert("RGB")
        crop = min(_CELEBA_CROP, img.width, img.height)
        img = TF.center_crop(img, [crop, crop])
        img = TF.resize(img, [self.size, self.size], InterpolationMode.BILINEAR, antialias=True)
        return TF.to_tensor(img), torch.tensor(0, dtype=torch.int64)


def _celeba(config: DataConfig) -> DatasetSplits:
    root = os.path.abspath(os.path.expanduser(str(config.data_root)))
    folder = os.path.join(root, "celeba")
    files = "img_align_celeba/*.jpg and list_eval_partition.txt"
    how = f"extract img_align_celeba.zip and copy list_eval_partition.txt into {folder}"
    if config.download:
        from torchvision import datasets

        try:  # downloads every CelebA file (needs gdown); loading below is ours
            datasets.CelebA(root, split="all", target_type=[], download=True)
        except Exception as err:  # any download failure is reported the same way
            raise _not_found("CelebA", folder, files, how, f"download failed: {err}") from None
    try:
        parts = [_CelebAImages(root, p, config.size) for p in (0, 1, 2)]
        present = set(os.listdir(os.path.join(folder, "img_align_celeba")))
    except OSError as err:
        raise _not_found("CelebA", folder, files, how, str(err)) from None
    missing = [f for d in parts for f in d.files if f not in present]
    if missing:
        reason = f"{len(missing)} listed images missing, e.g. {missing[0]}"
        raise _not_found("CelebA", folder, files, how, reason)
    return DatasetSplits(parts[0], parts[1], parts[2], 0, 3, config.size, "celeba")


def load_dataset(config: DataConfig) -> DatasetSplits:
    """Load the train / val / test splits described by ``config``.

    Deterministic in ``config.seed``. Raises :class:`DatasetNotFoundError` (one clear message,
    no deep traceback) when the files of mnist / cifar10 / celeba are not under ``data_root``.

    >>> s = load_dataset(DataConfig("digits"))
    >>> len(s.train) + len(s.val) + len(s.test), s.num_classes, s.image_size
    (1797, 10, 16)
    """
    if config.dataset == "digits":
        splits = _digits(config)
    elif config.dataset == "celeba":
        splits = _celeba(config)
    else:
        splits = _torchvision(config)
    splits.train = _limit(splits.train, config.limit_train, config.seed, 1)
    splits.val = _limit(splits.val, _val_limit(config), config.seed, 2)
    splits.test = _limit(splits.test, config.limit_test, config.seed, 3)
    return splits


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A single-process ``DataLoader`` whose shuffling comes from a generator seeded by ``seed``.

    Two loaders built with the same seed yield the same batches in the same order; one
    loader reshuffles at every epoch, in a sequence fixed by the seed.

    >>> s = load_dataset(DataConfig("digits"))
    >>> xb, yb = next(iter(make_loader(s.test, batch_size=8, shuffle=False)))
    >>> tuple(xb.shape), yb.dtype
    ((8, 1, 16, 16), torch.int64)
    """
    if not _positive_int(batch_size):
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=0,
        generator=generator,
    )
