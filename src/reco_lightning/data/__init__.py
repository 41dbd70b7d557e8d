"""Data: labelled base datasets, augmentation views and the Lightning data module.

``SSLDataModule`` is what training uses; ``build_datasets`` and the view builders are
exported for evaluation scripts and custom methods that need the same images and views.
"""

from .datamodule import LabelledDataset, MultiViewDataset, SSLDataModule
from .datasets import DATASET_CHOICES, DatasetSplits, build_datasets
from .views import eval_view, strong_view, weak_view

__all__ = [
    "DATASET_CHOICES",
    "DatasetSplits",
    "LabelledDataset",
    "MultiViewDataset",
    "SSLDataModule",
    "build_datasets",
    "eval_view",
    "strong_view",
    "weak_view",
]
