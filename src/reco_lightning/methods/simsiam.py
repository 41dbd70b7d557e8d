"""SimSiam (Chen & He, 2021): a predictor and a stop-gradient, no negatives, no target network."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from ..errors import positive
from ..losses.instance import byol_loss
from ..models import mlp_head
from .base import MethodOutput, SSLMethod
from .registry import register_method


@register_method("simsiam")
class SimSiam(SSLMethod):
    """SimSiam: each view's prediction regresses the other view's projection, which gets no
    gradient; the loss is BYOL's ``2 - 2 cos``, SimSiam's negative cosine shifted by a constant.

    It shows what a new method needs to take ReCo: an online embedding and
    ``self.reco = self.make_reco(dim)``. With no target network, ReCo keeps an EMA copy of
    backbone, projector and predictor as its teacher and a queue of negatives of its own.

    Args:
        proj_hidden_dim, proj_output_dim: the projector MLP (3 layers, BatchNorm on the output).
        pred_hidden_dim: the predictor's bottleneck.
        temperature: used only by ReCo's local term (SimSiam has none).
        **kwargs: :class:`~reco_lightning.methods.base.SSLMethod`'s arguments.
    """

    def __init__(
        self,
        proj_hidden_dim: int = 2048,
        proj_output_dim: int = 2048,
        pred_hidden_dim: int = 512,
        temperature: float = 0.2,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.temperature = positive("method.temperature", temperature)
        self.projector = mlp_head(
            self.feature_dim, proj_hidden_dim, proj_output_dim, num_layers=3, output_bn=True
        )
        self.predictor = mlp_head(proj_output_dim, pred_hidden_dim, proj_output_dim)
        self.reco = self.make_reco(proj_output_dim)

    def online_embedding(self, images: Tensor) -> Tensor:
        return F.normalize(self.predictor(self.projector(self.backbone(images))), dim=1)

    def method_step(self, view1: Tensor, view2: Tensor) -> MethodOutput:
        features1 = self.backbone(view1)
        z1 = self.projector(features1)
        z2 = self.projector(self.backbone(view2))
        p1, p2 = F.normalize(self.predictor(z1), dim=1), F.normalize(self.predictor(z2), dim=1)
        z1, z2 = F.normalize(z1, dim=1).detach(), F.normalize(z2, dim=1).detach()
        loss = (byol_loss(p1, z2) + byol_loss(p2, z1)) / 2
        return MethodOutput(loss, p1, z2, features1)
