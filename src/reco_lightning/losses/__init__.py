"""The losses as pure functions of embeddings, shared by the methods and ReCo.

* :mod:`.instance`: the base methods' instance-discrimination losses (InfoNCE with a
  queue, NT-Xent, BYOL's regression);
* :mod:`.relation`: ReCo's global relation term and local interpolation term.

Nothing here imports the methods or ReCo's modules: they import these.
"""

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
