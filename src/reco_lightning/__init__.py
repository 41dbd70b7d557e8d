"""reco_lightning: ReCo's relation terms as a PyTorch Lightning plug-in.

``MoCo``, ``SimCLR`` and ``BYOL`` are LightningModules that take ReCo with ``reco={...}``;
``ReCoMixin`` gives the same terms to your own LightningModule; ``SSLDataModule`` makes
the views they train on.

>>> from reco_lightning import MoCo, SSLDataModule

The names are imported when first used (PEP 562), so that ``python -m reco_lightning
--help``, which imports this package first, does not pay for importing Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

#: each public name and the subpackage that defines it
_EXPORTS = {
    "SSLDataModule": ".data",
    "BYOL": ".methods",
    "MoCo": ".methods",
    "SimCLR": ".methods",
    "SSLMethod": ".methods",
    "FeatureQueue": ".reco",
    "ReCo": ".reco",
    "ReCoConfig": ".reco",
    "ReCoMixin": ".reco",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'reco_lightning' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
