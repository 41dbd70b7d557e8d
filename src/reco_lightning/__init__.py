"""reco_lightning: ReCo's relation terms as a PyTorch Lightning plug-in.

``MoCo``, ``SimCLR`` and ``BYOL`` are LightningModules that take ReCo with ``reco={...}``;
``ReCoMixin`` gives the same terms to your own LightningModule; ``SSLDataModule`` makes
the views they train on.

>>> from reco_lightning import MoCo, SSLDataModule
"""

from .data import SSLDataModule
from .methods import BYOL, MoCo, SimCLR, SSLMethod
from .reco import FeatureQueue, ReCo, ReCoConfig, ReCoMixin

__all__ = ["BYOL", "FeatureQueue", "MoCo", "ReCo", "ReCoConfig", "ReCoMixin", "SSLDataModule", "SSLMethod", "SimCLR"]
__version__ = "0.1.0"
