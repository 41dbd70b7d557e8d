"""ReCo's relation terms: losses, pixel mixing, the feature queue and ReCoMixin."""

from .config import ReCoConfig
from ..losses.relation import global_relation_loss, interpolation_target, local_interpolation_loss
from .mixin import ReCoMixin, ReCoTerms
from .mixing import MixedBatch, cutmix_box, mix_views
from .queue import FeatureQueue

__all__ = [
    "FeatureQueue",
    "MixedBatch",
    "ReCoConfig",
    "ReCoMixin",
    "ReCoTerms",
    "cutmix_box",
    "global_relation_loss",
    "interpolation_target",
    "local_interpolation_loss",
    "mix_views",
]
