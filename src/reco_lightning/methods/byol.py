"""BYOL (Grill et al., 2020): predictor, EMA target, symmetric regression loss."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import fraction, positive
from ..losses.instance import byol_loss
from ..models import mlp_head
from ..utils.optim import split_decay_groups
from .base import MethodOutput, SSLMethod
from .momentum import ProjectedTarget
from .registry import register_method


@register_method("byol")
class BYOL(ProjectedTarget, SSLMethod):
    """BYOL with the cosine schedule of the target momentum (``momentum`` -> 1).

    For ReCo the online embedding is the predictor's output and the target embedding the
    target projector's, the pair BYOL itself compares; ReCo's local term keeps its own queue.

    Args:
        momentum: base EMA momentum of the target network.
        proj_hidden_dim, proj_output_dim: the projector MLP.
        pred_hidden_dim: the predictor MLP's hidden width (its output is proj_output_dim).
        temperature: used only by ReCo's local term (BYOL has none).
        predictor_lr_scale: the predictor's learning rate over the others' (1 = BYOL's).
        **kwargs: :class:`~reco_lightning.methods.base.SSLMethod`'s arguments.
    """

    reco_mix = "mixup"  # why: docs/benchmarks.md, "How the defaults were chosen"
    #: no warm-up of ReCo's weights: chosen by cpu16v2's validation cells (docs/benchmarks.md)
    reco_warmup_epochs = 0.0

    def __init__(
        self,
        momentum: float = 0.99,
        proj_hidden_dim: int = 4096,
        proj_output_dim: int = 256,
        pred_hidden_dim: int = 4096,
        temperature: float = 0.2,
        predictor_lr_scale: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.predictor_lr_scale = positive("method.predictor_lr_scale", predictor_lr_scale)
        self.base_momentum = fraction("method.momentum", momentum)
        self.momentum_schedule = "cosine"
        self.temperature = positive("method.temperature", temperature)
        self.projector = mlp_head(self.feature_dim, proj_hidden_dim, proj_output_dim)
        self.predictor = mlp_head(proj_output_dim, pred_hidden_dim, proj_output_dim)
        self.make_target_networks()
        self.reco = self.make_reco(proj_output_dim)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The base class's groups, the predictor's apart when its learning rate is scaled."""
        if self.predictor_lr_scale == 1.0:
            return super().parameter_groups()
        rest = nn.ModuleDict(
            {n: m for n, m in self.named_children() if n not in ("classifier", "predictor")}
        )
        groups = split_decay_groups(rest)
        for group in split_decay_groups(self.predictor):
            groups.append({**group, "lr": self.hparams.lr * self.predictor_lr_scale})
        return groups

    def online_embedding(self, images: Tensor) -> Tensor:
        return F.normalize(self.predictor(self.projector(self.backbone(images))), dim=1)

    def method_step(self, view1: Tensor, view2: Tensor) -> MethodOutput:
        features1 = self.backbone(view1)
        p1 = F.normalize(self.predictor(self.projector(features1)), dim=1)
        p2 = self.online_embedding(view2)
        k1 = self.target_embedding(view1)
        k2 = self.target_embedding(view2)
        loss = (byol_loss(p1, k2) + byol_loss(p2, k1)) / 2
        return MethodOutput(loss, p1, k2, features1)
