"""Backbones and MLP heads."""

from .backbones import build_backbone
from .heads import mlp_head

__all__ = ["build_backbone", "mlp_head"]
