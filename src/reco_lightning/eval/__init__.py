"""Evaluation on frozen features: kNN, linear evaluation, relation diagnostics, pictures."""

from .diagnostics import relation_diagnostics
from .knn import knn_accuracy, weighted_knn_predict, weighted_knn_scores
from .linear import LinearProtocol, linear_evaluation

__all__ = [
    "LinearProtocol",
    "knn_accuracy",
    "linear_evaluation",
    "relation_diagnostics",
    "weighted_knn_predict",
    "weighted_knn_scores",
]
