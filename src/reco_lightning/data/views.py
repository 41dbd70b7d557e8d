"""Image view pipelines: PIL image in, normalised float tensor (C, H, W) out.

Three pipelines, because self-supervised training needs three kinds of views:

* :func:`strong_view` - the heavy MoCo v2 / SimCLR augmentation. Two of these per image
  form the positive pair of the contrastive loss, so they must differ a lot.
* :func:`weak_view` - crop and flip only. ReCo compares relations computed on a weakly
  augmented view with those of the strong views; colour changes would alter the very
  relations it wants as a stable target, so this view keeps colours untouched.
* :func:`eval_view` - deterministic resize and centre crop, for the kNN monitor and linear
  evaluation, where the same image must always give the same tensor.

The pipelines use ``torchvision.transforms.v2`` and draw randomness from torch's global
RNG, which the DataLoader seeds per worker, so ``lightning.seed_everything(workers=True)``
makes them reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torchvision.transforms import v2

from ..errors import ConfigError
from .datasets import _positive_int

#: Below this size blur is skipped: on 32 px CIFAR-like images a blur kernel of a few
#: pixels wipes out most of the detail, and the MoCo v2 / SimCLR CIFAR recipes omit it.
BLUR_MIN_SIZE = 64

DEFAULT_CROP_SCALE: tuple[float, float] = (0.2, 1.0)


def _check_size(image_size: int) -> int:
    """Reject sizes that would build a pipeline failing only at the first batch."""
    hint = "set dataset.image_size to the side length in pixels, e.g. 32"
    return _positive_int(image_size, "dataset.image_size", hint)


def _check_scale(crop_scale: Sequence[float]) -> tuple[float, float]:
    """Validate the RandomResizedCrop area range so a typo fails before training."""
    fix = "set dataset.crop_scale to [min, max] with 0 < min <= max <= 1, e.g. [0.2, 1.0]"
    try:
        low, high = (float(v) for v in crop_scale)
    except (TypeError, ValueError):
        raise ConfigError(
            f"dataset.crop_scale={crop_scale!r} is not a pair of numbers: {fix}"
        ) from None
    if not 0.0 < low <= high <= 1.0:
        raise ConfigError(f"dataset.crop_scale={crop_scale!r} is out of range: {fix}")
    return low, high


def _to_tensor(mean: Sequence[float], std: Sequence[float]) -> list[Any]:
    """The common tail: PIL -> float tensor in [0, 1] -> per-channel normalisation."""
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise ConfigError(
            f"mean={tuple(mean)!r} / std={tuple(std)!r} must hold 3 values each (RGB) and "
            "std must be positive: pass the per-channel statistics of the dataset"
        )
    return [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(map(float, mean)), std=list(map(float, std))),
    ]


def _crop(image_size: int, crop_scale: Sequence[float]) -> v2.RandomResizedCrop:
    """The random crop that starts the strong and the weak view."""
    return v2.RandomResizedCrop(
        _check_size(image_size), scale=_check_scale(crop_scale), antialias=True
    )


def _finish(
    steps: list[Any], horizontal_flip: bool, mean: Sequence[float], std: Sequence[float]
) -> v2.Compose:
    """The common end of the strong and the weak view: the optional flip, then tensors."""
    return v2.Compose(
        steps + ([v2.RandomHorizontalFlip()] if horizontal_flip else []) + _to_tensor(mean, std)
    )


def blur_kernel_size(image_size: int) -> int:
    """Gaussian blur kernel of about 10 % of the image side, made odd as blur requires."""
    kernel = max(3, int(0.1 * image_size))
    return kernel if kernel % 2 == 1 else kernel + 1


def strong_view(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_scale: tuple[float, float] = DEFAULT_CROP_SCALE,
    horizontal_flip: bool = True,
) -> Callable[[Any], torch.Tensor]:
    """MoCo v2-style augmentation for the two contrastive views.

    Random crop, colour jitter (p=0.8), grayscale (p=0.2), Gaussian blur (p=0.5, only when
    ``image_size >= 64``), horizontal flip (unless turned off: a mirrored digit or letter is
    another symbol, so invariance to flips is wrong for such data), then tensor conversion
    and normalisation.
    """
    steps: list[Any] = [
        _crop(image_size, crop_scale),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
    ]
    if image_size >= BLUR_MIN_SIZE:
        steps.append(
            v2.RandomApply([v2.GaussianBlur(blur_kernel_size(image_size), sigma=(0.1, 2.0))], p=0.5)
        )
    return _finish(steps, horizontal_flip, mean, std)


def weak_view(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_scale: tuple[float, float] = DEFAULT_CROP_SCALE,
    horizontal_flip: bool = True,
) -> Callable[[Any], torch.Tensor]:
    """Geometry-only augmentation (crop + flip) for ReCo's weak view; colours are kept."""
    return _finish([_crop(image_size, crop_scale)], horizontal_flip, mean, std)


def eval_view(
    image_size: int, mean: Sequence[float], std: Sequence[float]
) -> Callable[[Any], torch.Tensor]:
    """Deterministic view for evaluation: resize the shorter side, centre crop, normalise."""
    size = _check_size(image_size)
    steps: list[Any] = [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
    return v2.Compose(steps + _to_tensor(mean, std))


__all__ = [
    "BLUR_MIN_SIZE",
    "DEFAULT_CROP_SCALE",
    "blur_kernel_size",
    "eval_view",
    "strong_view",
    "weak_view",
]
