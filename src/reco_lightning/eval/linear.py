"""Linear evaluation on frozen, pre-computed features.

The common protocol (MoCo, solo-learn) trains a linear classifier on a frozen backbone
with SGD and a cosine schedule. The backbone is run once here, not every epoch: without
augmentation each image always gives the same features, so recomputing them would only
cost time (with augmentation, as some protocols use, the features would differ per epoch;
that is not what this function does). Features are standardised with the training set's
mean and standard deviation, which plays the role of the BatchNorm without affine
parameters that recent protocols (MAE, solo-learn's option) put before the classifier,
and makes one learning rate fit backbones of any feature scale.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError


@dataclass
class LinearProtocol:
    """Settings of :func:`linear_evaluation` (recorded in ``eval.json``)."""

    epochs: int = 100
    lr: float = 0.1  # for a batch of 256, scaled linearly with batch_size
    batch_size: int = 256
    momentum: float = 0.9
    weight_decay: float = 0.0
    standardize: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs <= 0 or self.batch_size <= 0:
            raise ConfigError(
                f"linear.epochs={self.epochs} and linear.batch_size={self.batch_size} must be "
                "positive"
            )
        if self.lr <= 0:
            raise ConfigError(f"linear.lr={self.lr} must be positive, e.g. 0.1")


def topk_accuracy(logits: Tensor, labels: Tensor, k: int) -> float:
    """Share of rows whose label is among the ``k`` highest logits."""
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1).float().mean().item()


def linear_evaluation(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    num_classes: int,
    protocol: LinearProtocol | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a linear classifier on ``train_features``; top-1/top-5 on ``test_features``."""
    protocol = protocol or LinearProtocol()
    generator = torch.Generator().manual_seed(protocol.seed)
    train_features, test_features = train_features.float(), test_features.float()
    if protocol.standardize:
        mean, std = train_features.mean(0), train_features.std(0).clamp_min(1e-6)
        train_features, test_features = (train_features - mean) / std, (test_features - mean) / std
    torch.manual_seed(protocol.seed)
    classifier = nn.Linear(train_features.shape[1], num_classes).to(train_features.device)
    lr = protocol.lr * protocol.batch_size / 256
    optimizer = torch.optim.SGD(
        classifier.parameters(),
        lr=lr,
        momentum=protocol.momentum,
        weight_decay=protocol.weight_decay,
    )
    steps_per_epoch = math.ceil(train_features.shape[0] / protocol.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=protocol.epochs * steps_per_epoch
    )
    epochs = range(protocol.epochs)
    if progress:
        from tqdm.auto import tqdm

        epochs = tqdm(epochs, desc="linear evaluation", unit="epoch", leave=False)
    for _ in epochs:
        order = torch.randperm(train_features.shape[0], generator=generator).to(
            train_features.device
        )
        for start in range(0, order.shape[0], protocol.batch_size):
            rows = order[start : start + protocol.batch_size]
            loss = F.cross_entropy(classifier(train_features[rows]), train_labels[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    with torch.no_grad():
        logits = classifier(test_features)
        train_logits = classifier(train_features)
    return {
        "top1": topk_accuracy(logits, test_labels, 1),
        "top5": topk_accuracy(logits, test_labels, 5),
        "train_top1": topk_accuracy(train_logits, train_labels, 1),
        "protocol": asdict(protocol)
        | {"lr_scaled": lr, "optimizer": "sgd", "schedule": "cosine, per step"},
    }


__all__ = ["LinearProtocol", "linear_evaluation", "topk_accuracy"]
