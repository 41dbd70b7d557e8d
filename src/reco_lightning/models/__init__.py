"""Backbones, MLP heads, the feature queue, and the module walks methods and ReCo share."""

from .backbones import build_backbone
from .heads import mlp_head
from .modules import compile_in_place, embedding_children, trainable_children
from .queue import FeatureQueue

__all__ = [
    "FeatureQueue",
    "build_backbone",
    "compile_in_place",
    "embedding_children",
    "mlp_head",
    "trainable_children",
]
