"""Pixel-space mixing of two views for ReCo's local interpolation term."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

MIX_MODES = ("cutmix", "mixup")


@dataclass
class MixedBatch:
    """A mixed batch and what it is a mix of.

    ``images[i]`` mixes ``first[i]`` (weight ``lam``) with ``second[permutation[i]]``
    (weight ``1 - lam``); for CutMix ``lam`` is the exact share of pixels from ``first``
    after the box was clipped to the image.
    """

    images: Tensor
    permutation: Tensor
    lam: float
    box: tuple[int, int, int, int] | None = None  # (top, bottom, left, right), CutMix only


def sample_lambda(alpha: float) -> float:
    """``lam ~ Beta(alpha, alpha)``, drawn on the CPU from torch's global generator."""
    return float(torch.distributions.Beta(alpha, alpha).sample())


def cutmix_box(height: int, width: int, lam: float) -> tuple[int, int, int, int]:
    """A box of side ratio ``sqrt(1 - lam)`` around a uniform centre, clipped to the image."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    centre_y = int(torch.randint(height, (1,)))
    centre_x = int(torch.randint(width, (1,)))
    top, bottom = max(centre_y - cut_h // 2, 0), min(centre_y + cut_h // 2, height)
    left, right = max(centre_x - cut_w // 2, 0), min(centre_x + cut_w // 2, width)
    return top, bottom, left, right


def mix_views(
    first: Tensor, second: Tensor, mode: str = "cutmix", alpha: float = 1.0
) -> MixedBatch:
    """Mix ``first`` with a random permutation of ``second`` (one ``lam`` and permutation per call).

    CutMix pastes a box of ``second[pi]`` into ``first`` and recomputes ``lam`` from the
    clipped box as ``1 - box_area / (H * W)``; Mixup blends all pixels.
    """
    if mode not in MIX_MODES:
        raise ValueError(f"reco.mix={mode!r} is unknown: choose one of {MIX_MODES}")
    lam = sample_lambda(alpha)
    permutation = torch.randperm(first.shape[0], device=first.device)
    if mode == "mixup":
        return MixedBatch(lam * first + (1.0 - lam) * second[permutation], permutation, lam)
    height, width = first.shape[-2:]
    top, bottom, left, right = cutmix_box(height, width, lam)
    images = first.clone()
    images[:, :, top:bottom, left:right] = second[permutation, :, top:bottom, left:right]
    exact_lam = 1.0 - (bottom - top) * (right - left) / (height * width)
    return MixedBatch(images, permutation, exact_lam, (top, bottom, left, right))
