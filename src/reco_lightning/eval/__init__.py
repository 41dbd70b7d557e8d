"""Evaluation on frozen features."""

from .knn import knn_accuracy, weighted_knn_predict

__all__ = ["knn_accuracy", "weighted_knn_predict"]
