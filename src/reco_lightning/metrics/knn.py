"""Weighted k-nearest-neighbour classification on frozen features (InstDisc, Wu et al. 2018).

The standard monitor of SSL training: it needs no training of its own, and it measures
exactly what contrastive learning shapes, the neighbourhoods of the feature space.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


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
    ``exp(cos / temperature)``. Test features are processed in chunks so that a 10k x 50k
    similarity matrix never has to exist at once.
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


@torch.no_grad()
def weighted_knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> Tensor:
    """Class predictions for ``test_features``: the class with most votes (see above)."""
    scores = weighted_knn_scores(train_features, train_labels, test_features, num_classes, k, temperature, chunk_size)
    return scores.argmax(dim=1)


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
) -> float:
    """Top-1 accuracy (0..1) of :func:`weighted_knn_predict`."""
    predicted = weighted_knn_predict(train_features, train_labels, test_features, num_classes, k, temperature)
    return (predicted == test_labels).float().mean().item()
