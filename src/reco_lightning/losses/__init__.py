"""The losses as pure functions of embeddings: the base methods' (:mod:`.instance`) and
ReCo's relation terms (:mod:`.relation`). Nothing here imports the methods or ReCo's modules."""

from .instance import byol_loss, info_nce_loss, nt_xent_loss
from .relation import global_relation_loss, interpolation_target, local_interpolation_loss

__all__ = [
    "byol_loss",
    "global_relation_loss",
    "info_nce_loss",
    "interpolation_target",
    "local_interpolation_loss",
    "nt_xent_loss",
]
