"""The built-in self-supervised methods and their registry."""

from .base import MethodOutput, SSLMethod
from .byol import BYOL
from .moco import MoCo
from .simclr import SimCLR
from .simsiam import SimSiam

#: the names ``+method=`` accepts, and the class each builds
METHODS: dict[str, type[SSLMethod]] = {
    "moco": MoCo,
    "simclr": SimCLR,
    "byol": BYOL,
    "simsiam": SimSiam,
}

__all__ = ["BYOL", "METHODS", "MethodOutput", "MoCo", "SSLMethod", "SimCLR", "SimSiam"]
