"""The offline evaluation command on frozen features: kNN, linear evaluation, relation
diagnostics, pictures (the measures themselves live in :mod:`reco_lightning.metrics`)."""

from .linear import LinearProtocol, linear_evaluation

__all__ = ["LinearProtocol", "linear_evaluation"]
