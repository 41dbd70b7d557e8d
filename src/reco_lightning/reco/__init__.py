"""ReCo's relation terms: the ``ReCo`` module, its settings and parts, and ``ReCoMixin``."""

from ..losses.relation import global_relation_loss, interpolation_target, local_interpolation_loss
from ..models.queue import FeatureQueue
from .config import ReCoConfig
from .mixin import ReCoMixin, log_reco_terms, split_views, training_progress
from .mixing import MixedBatch, cutmix_box, mix_views
from .module import ReCo, ReCoTerms, TrainingProgress

__all__ = [
    "FeatureQueue",
    "MixedBatch",
    "ReCo",
    "ReCoConfig",
    "ReCoMixin",
    "ReCoTerms",
    "TrainingProgress",
    "cutmix_box",
    "global_relation_loss",
    "interpolation_target",
    "local_interpolation_loss",
    "log_reco_terms",
    "mix_views",
    "split_views",
    "training_progress",
]
