"""Labelled base datasets: every item is ``(PIL.Image in RGB, int label)``.

The base datasets carry no transform. The data module wraps the same base dataset with
different view pipelines (two strong views for training, the deterministic eval view for
the kNN monitor), so keeping images untransformed here avoids loading data twice.

Supported names (``dataset.name``):

* ``digits`` (default) - scikit-learn's bundled 8x8 handwritten digits. Needs no files and
  no network, so tests, tutorials and smoke runs work anywhere.
* ``cifar10`` / ``cifar100`` / ``stl10`` - the torchvision datasets under ``dataset.root``.
* ``imagefolder`` - your own images in ``root/train/<class>/...`` and ``root/val/<class>/``
  (or ``root/test/<class>/``), the torchvision ``ImageFolder`` layout.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10, CIFAR100, STL10, ImageFolder

from ..errors import ConfigError, ImageLoadError, whole_number
from ..utils.distributed import global_rank_from_environment

DATASET_CHOICES: tuple[str, ...] = ("digits", "cifar10", "cifar100", "stl10", "imagefolder")

Stats = tuple[float, float, float]

# Per-channel statistics of the training splits, as published with the datasets'
# common training recipes; fixed values so runs do not scan 50k images at start-up.
CIFAR10_MEAN: Stats = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: Stats = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN: Stats = (0.5071, 0.4865, 0.4409)
CIFAR100_STD: Stats = (0.2673, 0.2564, 0.2762)
STL10_MEAN: Stats = (0.4467, 0.4398, 0.4066)
STL10_STD: Stats = (0.2603, 0.2566, 0.2713)
IMAGENET_MEAN: Stats = (0.485, 0.456, 0.406)
IMAGENET_STD: Stats = (0.229, 0.224, 0.225)

#: ``imagefolder`` with ``image_size=None`` keeps images up to this side length at their
#: own size (CIFAR-like data) and resizes anything larger to the ImageNet default 224.
SMALL_IMAGE_MAX = 64
LARGE_IMAGE_SIZE = 224
#: At most this many training image headers are read to infer the size (:func:`infer_image_size`):
#: enough that a few stray files cannot decide it, few enough to stay instant on a network drive.
SIZE_SAMPLE = 256


@dataclass
class DatasetSplits:
    """The two labelled splits plus what the model and the views need to know about them."""

    train: Dataset
    val: Dataset
    num_classes: int
    image_size: int
    mean: Stats
    std: Stats
    name: str


# --------------------------------------------------------------------------- images
def load_rgb_image(path: str) -> Image.Image:
    """Open an image file as RGB, turning any failure into :class:`ImageLoadError`.

    A module-level function (not a lambda) so DataLoader workers can pickle it; the error
    carries the path in its single string argument so it survives the re-raise from a
    worker and tells the user which file to fix.
    """
    try:
        with open(path, "rb") as handle:
            image = Image.open(handle)
            return image.convert("RGB")  # convert() forces the decode inside the try
    except Exception as err:  # noqa: BLE001 - any decoder/OS failure means the same thing
        raise ImageLoadError(
            f"cannot read image {path}: {err}. Remove or replace the file (or fix its "
            "permissions) and run again"
        ) from err


# --------------------------------------------------------------------------- digits
class DigitsDataset(Dataset):
    """In-memory grayscale digits handed out as RGB PIL images.

    Images are stored once as a uint8 ``(N, S, S)`` array (one channel: the three RGB
    channels would be identical) so a 224 px variant stays under 100 MB; the PIL image is
    made per item because the view pipelines expect PIL input.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        if images.dtype != np.uint8 or images.ndim != 3:
            raise ValueError("images must be a uint8 array of shape (N, S, S)")
        if len(images) != len(labels):
            raise ValueError("images and labels must have the same length")
        self.images = images
        self.labels = labels.astype(np.int64)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        image = Image.fromarray(self.images[index]).convert("RGB")
        return image, int(self.labels[index])


def _upsample_digits(raw: np.ndarray, image_size: int) -> np.ndarray:
    """Scale 0..16 digit intensities to uint8 and resize all images once, bilinearly.

    Resizing at build time, not per item, keeps the per-batch cost equal to a CIFAR-sized
    dataset and makes every view start from the same smooth image.
    """
    images = torch.from_numpy(raw.astype(np.float32) * (255.0 / 16.0)).view(-1, 1, 8, 8)
    if image_size != 8:
        images = F.interpolate(
            images, size=(image_size, image_size), mode="bilinear", align_corners=False
        )
    return images.round().clamp(0, 255).to(torch.uint8).squeeze(1).numpy()


def _build_digits(image_size: int | None, val_fraction: float, seed: int) -> DatasetSplits:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not isinstance(val_fraction, (int, float)) or not 0.0 < float(val_fraction) < 1.0:
        raise ConfigError(
            f"dataset.val_fraction={val_fraction!r} is not between 0 and 1: "
            "set dataset.val_fraction to the share of digits held out for validation, e.g. 0.2"
        )
    size = 32 if image_size is None else _check_image_size(image_size)
    bunch = load_digits()
    labels = np.asarray(bunch.target, dtype=np.int64)
    images = _upsample_digits(np.asarray(bunch.images), size)
    # Stratified so every class appears in both splits in its natural proportion, and
    # seeded so the kNN/linear numbers of two runs are measured on the same images.
    train_idx, val_idx = train_test_split(
        np.arange(len(labels)), test_size=float(val_fraction), stratify=labels, random_state=seed
    )
    train_idx, val_idx = np.sort(train_idx), np.sort(val_idx)
    # Statistics of the train split only (no peeking at val); gray, so equal per channel.
    pixels = images[train_idx].astype(np.float64) / 255.0
    mean, std = float(pixels.mean()), float(pixels.std())
    train = DigitsDataset(images[train_idx], labels[train_idx])
    val = DigitsDataset(images[val_idx], labels[val_idx])
    return DatasetSplits(train, val, 10, size, (mean, mean, mean), (std, std, std), "digits")


# --------------------------------------------------------------------------- torchvision
def _torchvision_split(name: str, root: str, download: bool, factory: Any, **kwargs: Any) -> Any:
    """Build one torchvision dataset, rephrasing its errors as settings to change."""
    try:
        return factory(root=root, download=download, **kwargs)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted ..."
        if download:
            raise ConfigError(
                f"dataset.name='{name}': the files under dataset.root='{root}' are missing or "
                f"corrupt even after downloading ({err}): delete them and run again, or point "
                f"dataset.root at a folder holding a complete copy of {name}"
            ) from err
        raise ConfigError(
            f"dataset.name='{name}': no {name} files under dataset.root='{root}' ({err}): "
            f"set dataset.download=true or point dataset.root at the folder holding {name}"
        ) from err
    except OSError as err:  # network failures (URLError is an OSError) or an unwritable root
        raise ConfigError(
            f"dataset.name='{name}': could not download into dataset.root='{root}' ({err}): "
            f"download {name} by hand into dataset.root and set dataset.download=false, "
            "or check the network and that dataset.root is writable"
        ) from err


def _build_torchvision(
    name: str, root: str | None, image_size: int | None, download: bool
) -> DatasetSplits:
    root = "data" if root is None else str(root)
    # STL-10 uses its labelled "train" split (5,000 images) so kNN/linear monitoring has labels;
    # the 100k "unlabeled" split would suit pre-training but is not used by default.
    factory, train_kw, val_kw, num_classes, default_size, mean, std = {
        "cifar10": (CIFAR10, {"train": True}, {"train": False}, 10, 32, CIFAR10_MEAN, CIFAR10_STD),
        "cifar100": (
            CIFAR100,
            {"train": True},
            {"train": False},
            100,
            32,
            CIFAR100_MEAN,
            CIFAR100_STD,
        ),
        "stl10": (STL10, {"split": "train"}, {"split": "test"}, 10, 96, STL10_MEAN, STL10_STD),
    }[name]
    train = _torchvision_split(name, root, download, factory, **train_kw)
    val = _torchvision_split(name, root, download, factory, **val_kw)
    size = default_size if image_size is None else _check_image_size(image_size)
    return DatasetSplits(train, val, num_classes, size, mean, std, name)


# --------------------------------------------------------------------------- imagefolder
class ImageFolderSplit(ImageFolder):
    """``ImageFolder`` that reads with :func:`load_rgb_image` and can reuse train's classes.

    The val/test split must map class names to the *same* indices as train, even when it
    lacks some classes; plain ``ImageFolder`` numbers the classes it finds, which would
    silently shift the labels. Passing ``class_to_idx`` pins the mapping.
    """

    def __init__(self, root: str | Path, class_to_idx: dict[str, int] | None = None) -> None:
        self._fixed_classes = dict(class_to_idx) if class_to_idx is not None else None
        super().__init__(str(root), loader=load_rgb_image, allow_empty=class_to_idx is not None)

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        classes, mapping = super().find_classes(directory)
        if self._fixed_classes is None:
            return classes, mapping
        unknown = sorted(set(classes) - set(self._fixed_classes))
        if unknown:
            raise ConfigError(
                f"dataset.root: {directory} has class folders {unknown} that train/ lacks: "
                "give train/ and the evaluation folder the same class subfolders"
            )
        fixed = sorted(self._fixed_classes, key=self._fixed_classes.__getitem__)
        return fixed, dict(self._fixed_classes)


def _training_size(width: int, height: int) -> int:
    """The shorter side, as the views resize it and crop a square; sides above
    :data:`SMALL_IMAGE_MAX` map to :data:`LARGE_IMAGE_SIZE`, so photos of many sizes agree."""
    short = min(width, height)
    return short if short <= SMALL_IMAGE_MAX else LARGE_IMAGE_SIZE


def _evenly_spaced(count: int, limit: int) -> list[int]:
    """``min(count, limit)`` indices spread evenly over ``range(count)``: the sorted file list is
    grouped by class, so its head would sample one class (and whatever odd file sorts first)."""
    taken = min(count, limit)
    return [index * count // taken for index in range(taken)]


def _is_rank_zero() -> bool:
    """Whether this process reports: every DDP rank builds the data, one should talk."""
    return global_rank_from_environment() == 0


def infer_image_size(paths: Sequence[str], limit: int = SIZE_SAMPLE) -> int:
    """Infer the training image size of an image folder by a vote of a sample of its files.

    A vote, because deciding from one file let a single stray image (a 1x1 tracking pixel
    that sorted first) train a whole run at 1 px. The headers (no pixels) of up to ``limit``
    files spread over ``paths`` are read; each votes for :func:`_training_size` and the most
    common vote wins, the **larger** size on a tie (training below an image's size throws
    detail away, above it only upsamples). Unreadable files are skipped here (training
    reports them). On rank 0 prints the size and warns when sampled images disagree.

    Raises:
        ImageLoadError: none of the sampled files could be read.
    """
    sampled = [paths[index] for index in _evenly_spaced(len(paths), limit)]
    dimensions: dict[str, tuple[int, int]] = {}
    first_error: Exception | None = None
    for path in sampled:
        try:
            with Image.open(path) as image:
                dimensions[path] = image.size
        except Exception as err:  # noqa: BLE001 - an unreadable file is reported when trained on
            first_error = first_error or err
    if not dimensions:
        raise ImageLoadError(
            f"cannot read image {sampled[0]}: {first_error}. None of the {len(sampled)} "
            "training images sampled to infer dataset.image_size could be read: remove or "
            "replace the files (or fix their permissions), or set dataset.image_size"
        )
    votes = Counter(_training_size(*size) for size in dimensions.values())
    size = max(votes, key=lambda candidate: (votes[candidate], candidate))
    if _is_rank_zero():
        skipped = len(sampled) - len(dimensions)
        unread = f", {skipped} unreadable skipped" if skipped else ""
        print(
            f"reco_lightning: image size {size} px, inferred from {len(dimensions)} of "
            f"{len(paths):,} training images{unread} (dataset.image_size=N to choose)",
            flush=True,
        )
        others = [path for path, dims in dimensions.items() if _training_size(*dims) != size]
        if others:
            width, height = dimensions[others[0]]
            warnings.warn(
                f"reco_lightning: {len(others)} of {len(dimensions)} sampled training images "
                f"would train at another size than {size} px, e.g. {others[0]} ({width}x{height} "
                "px); they are resized to the inferred size: check them, or set dataset.image_size",
                UserWarning,
                stacklevel=2,
            )
    return size


def _build_imagefolder(root: str | None, image_size: int | None) -> DatasetSplits:
    layout = "set dataset.root to a folder holding train/ and val/ (or test/) subfolders"
    if root is None or str(root).strip() == "":
        raise ConfigError(f"dataset.name='imagefolder' needs dataset.root: {layout}")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise ConfigError(f"dataset.root='{root}' does not exist: {layout}")
    train_dir = base / "train"
    if not train_dir.is_dir():
        raise ConfigError(f"dataset.root='{root}' has no train/ subfolder: {layout}")
    eval_dir = next((base / s for s in ("val", "test") if (base / s).is_dir()), None)
    if eval_dir is None:
        raise ConfigError(
            f"dataset.root='{root}' has neither a val/ nor a test/ subfolder: {layout}"
        )

    def load(folder: Path, class_to_idx: dict[str, int] | None = None) -> ImageFolderSplit:
        try:
            split = ImageFolderSplit(folder, class_to_idx)
            if len(split) == 0:  # only val/test may have empty class folders
                raise FileNotFoundError("no image files in its class folders")
        except FileNotFoundError as err:  # no class folders, or a class folder without images
            raise ConfigError(
                f"dataset.root='{root}': {folder.name}/ holds no images ({err}): put each class's "
                f"images in its own subfolder, e.g. {folder.name}/<class>/img.png"
            ) from err
        return split

    train = load(train_dir)
    val = load(eval_dir, train.class_to_idx)
    if image_size is None:
        size = infer_image_size([path for path, _ in train.samples])
    else:
        size = _check_image_size(image_size)  # the user's choice: no file is read
    # ImageNet statistics always: user folders have no published statistics and scanning
    # them would slow start-up; normalisation only needs to be roughly right.
    return DatasetSplits(
        train, val, len(train.classes), size, IMAGENET_MEAN, IMAGENET_STD, "imagefolder"
    )


# --------------------------------------------------------------------------- entry point
def _positive_int(value: Any, key: str, hint: str) -> int:
    return whole_number(key, value, 1, hint)


def _check_image_size(image_size: Any) -> int:
    hint = "set dataset.image_size to the side length in pixels, or null for the dataset default"
    return _positive_int(image_size, "dataset.image_size", hint)


def build_datasets(
    name: str,
    root: str | None,
    image_size: int | None,
    download: bool,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> DatasetSplits:
    """Build the labelled train and val splits of dataset ``name``.

    ``image_size=None`` picks the dataset's native size (digits 32, CIFAR 32, STL-10 96,
    imagefolder inferred from a sample of the training images, see :func:`infer_image_size`).
    ``val_fraction`` and ``seed`` only matter for ``digits``, which has no official split;
    the other datasets use their own test split (or ``val/``/``test/`` folder) as validation.

    Raises:
        ConfigError: unknown name, missing/invalid root or files, bad sizes.
    """
    key = str(name).strip().lower()
    if key not in DATASET_CHOICES:
        raise ConfigError(
            f"dataset.name={name!r} is not supported: set dataset.name to one of "
            f"{', '.join(DATASET_CHOICES)}"
        )
    if key == "digits":
        return _build_digits(image_size, val_fraction, seed)
    if key == "imagefolder":
        return _build_imagefolder(root, image_size)
    return _build_torchvision(key, root, image_size, bool(download))


__all__ = [
    "DATASET_CHOICES",
    "DatasetSplits",
    "DigitsDataset",
    "ImageFolderSplit",
    "build_datasets",
    "infer_image_size",
    "load_rgb_image",
]
