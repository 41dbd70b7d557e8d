"""SimCLR (Chen et al., 2020): NT-Xent over the whole global batch."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from ..errors import positive
from ..losses.instance import nt_xent_loss
from ..models import mlp_head
from .base import MethodOutput, SSLMethod
from .registry import register_method


@register_method("simclr")
class SimCLR(SSLMethod):
    """SimCLR; the negatives of the whole global batch are gathered with gradients.

    With no target network, ReCo keeps an EMA copy of backbone and projector as its teacher
    (``reco.teacher=auto``): the weak view, ``k2`` and the local term's negatives come from
    it. ``reco.teacher=online`` is an ablation (docs/benchmarks.md has its result).

    Args:
        temperature: NT-Xent temperature.
        proj_hidden_dim, proj_output_dim: the projector MLP.
        **kwargs: :class:`~reco_lightning.methods.base.SSLMethod`'s arguments.
    """

    #: Mixup for ReCo's local term: chosen by cpu16v2's validation cells (docs/benchmarks.md)
    reco_mix = "mixup"

    def __init__(
        self,
        temperature: float = 0.2,
        proj_hidden_dim: int = 2048,
        proj_output_dim: int = 128,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.temperature = positive("method.temperature", temperature)
        self.projector = mlp_head(self.feature_dim, proj_hidden_dim, proj_output_dim)
        self.reco = self.make_reco(proj_output_dim, teacher_modules=["backbone", "projector"])

    def method_step(self, view1: Tensor, view2: Tensor) -> MethodOutput:
        features1 = self.backbone(view1)
        z1 = F.normalize(self.projector(features1), dim=1)
        z2 = self.online_embedding(view2)
        loss = nt_xent_loss(z1, z2, self.temperature)
        return MethodOutput(loss, z1, z2.detach(), features1)
