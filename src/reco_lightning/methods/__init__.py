"""The built-in self-supervised methods and their registry.

Every module of this package is imported here, so a method that registers itself
(:func:`~reco_lightning.methods.registry.register_method`) in a new module is known to the
CLI and the schema without editing this file.
"""

import importlib
import pkgutil

from .base import MethodOutput, SSLMethod
from .registry import METHODS, register_method

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

from .byol import BYOL  # noqa: E402
from .moco import MoCo  # noqa: E402
from .simclr import SimCLR  # noqa: E402
from .simsiam import SimSiam  # noqa: E402

__all__ = [
    "BYOL",
    "METHODS",
    "MethodOutput",
    "MoCo",
    "SSLMethod",
    "SimCLR",
    "SimSiam",
    "register_method",
]
