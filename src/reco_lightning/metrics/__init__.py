"""Weighted kNN and the relation diagnostics, shared by training and the ``eval`` command
(below both, so that the methods need not import ``eval``)."""

from .diagnostics import relation_diagnostics
from .knn import KNNMonitor, KNNResult, knn_accuracy, weighted_knn_scores

__all__ = ["KNNMonitor", "KNNResult", "knn_accuracy", "relation_diagnostics", "weighted_knn_scores"]
