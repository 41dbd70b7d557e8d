"""Running a frozen backbone over a loader once, with a progress bar."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    loader: DataLoader,
    device: torch.device,
    desc: str = "features",
    progress: bool = True,
) -> tuple[Tensor, Tensor]:
    """``(features, labels)`` of every ``(image, label)`` batch of ``loader``, on ``device``."""
    backbone.eval().to(device)
    batches = loader
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(loader, desc=desc, unit="batch", leave=False)
    features, labels = [], []
    for images, targets in batches:
        features.append(backbone(images.to(device, non_blocking=True)).float())
        labels.append(targets.to(device))
    return torch.cat(features), torch.cat(labels)
