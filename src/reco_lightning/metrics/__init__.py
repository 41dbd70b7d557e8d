"""Measures of frozen features, shared by training (the online kNN monitor and diagnostics)
and the offline ``eval`` command: weighted kNN and the relation diagnostics.

It sits below both, so that the methods need not import the ``eval`` command.
"""

from .diagnostics import relation_diagnostics
from .knn import KNNMonitor, KNNResult, knn_accuracy, weighted_knn_scores

__all__ = ["KNNMonitor", "KNNResult", "knn_accuracy", "relation_diagnostics", "weighted_knn_scores"]
