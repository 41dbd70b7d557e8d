"""Weighted k-nearest-neighbour classification on frozen features (InstDisc, Wu et al. 2018),
the standard monitor of SSL training: it measures the neighbourhoods contrastive learning shapes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


@torch.no_grad()
def weighted_knn_scores(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> Tensor:
    """Class votes ``(n_test, num_classes)`` of each test feature's ``k`` nearest neighbours.

    Features are L2-normalised; each neighbour votes for its class with weight
    ``exp(cos / temperature)``. Test features go in chunks, so no full similarity matrix exists.
    """
    train_features = F.normalize(train_features.float(), dim=1)
    test_features = F.normalize(test_features.float(), dim=1)
    k = min(k, train_features.shape[0])
    scores = []
    for start in range(0, test_features.shape[0], chunk_size):
        similarity = test_features[start : start + chunk_size] @ train_features.T
        top_similarity, top_index = similarity.topk(k, dim=1)
        weights = (top_similarity / temperature).exp()
        votes = torch.zeros(similarity.shape[0], num_classes, device=similarity.device)
        votes.scatter_add_(1, train_labels[top_index], weights)
        scores.append(votes)
    if not scores:
        return torch.empty(0, num_classes, device=test_features.device)
    return torch.cat(scores)


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
) -> float:
    """Top-1 accuracy (0..1) of the class with most votes (:func:`weighted_knn_scores`)."""
    scores = weighted_knn_scores(
        train_features, train_labels, test_features, num_classes, k, temperature
    )
    return (scores.argmax(1) == test_labels).float().mean().item()


class KNNMonitor(Metric):
    """The weighted kNN accuracy of validation features against a labelled feature bank.

    ``update(features, labels, bank=True)`` adds to the bank (the training images),
    ``bank=False`` to the queries (the test images). ``compute`` gathers both from every rank
    (torchmetrics pads uneven shares and trims, so every image counts once) and returns the
    accuracy with the gathered queries, which the relation diagnostics reuse. Not checkpointed.

    >>> monitor = KNNMonitor(num_classes=2, k=1)
    >>> monitor.update(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1]), bank=True)
    >>> monitor.update(torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([0, 0]), bank=False)
    >>> float(monitor.compute().accuracy)
    0.5
    """

    full_state_update = False

    def __init__(
        self, num_classes: int, k: int = 200, temperature: float = 0.1, **kwargs: object
    ) -> None:
        super().__init__(**kwargs)
        self.num_classes, self.k, self.temperature = num_classes, k, temperature
        for name in ("bank_features", "bank_labels", "query_features", "query_labels"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, features: Tensor, labels: Tensor, bank: bool) -> None:  # type: ignore[override]
        prefix = "bank" if bank else "query"
        getattr(self, f"{prefix}_features").append(features.detach().float())
        getattr(self, f"{prefix}_labels").append(labels.detach())

    def compute(self) -> KNNResult:  # type: ignore[override]
        bank_x, bank_y = dim_zero_cat(self.bank_features), dim_zero_cat(self.bank_labels)
        query_x, query_y = dim_zero_cat(self.query_features), dim_zero_cat(self.query_labels)
        accuracy = torch.tensor(
            knn_accuracy(
                bank_x, bank_y, query_x, query_y, self.num_classes, self.k, self.temperature
            )
        )
        return KNNResult(accuracy, query_x, query_y)

    def has_data(self) -> bool:
        """Whether this rank saw both bank and query batches (a sanity run may see neither)."""
        return bool(self.bank_features) and bool(self.query_features)


class KNNResult(NamedTuple):
    """:meth:`KNNMonitor.compute`'s result: the accuracy and the gathered query features."""

    accuracy: Tensor
    query_features: Tensor
    query_labels: Tensor
