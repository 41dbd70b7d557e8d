"""MoCo v2 (Chen et al., 2020): momentum encoder and a FIFO queue of keys."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, fraction, positive
from ..losses.instance import info_nce_loss
from ..models import FeatureQueue, mlp_head
from .base import MethodOutput, SSLMethod
from .momentum import ProjectedTarget
from .registry import register_method


@register_method("moco")
class MoCo(ProjectedTarget, SSLMethod):
    """MoCo v2 with an optional symmetric loss.

    Each step scores against a clone of the queue, then enqueues its keys. With
    ``symmetric=True`` both directions score against the queue as it was before the step,
    so a batch never meets its own keys as negatives. ReCo's local term borrows the queue's
    rows written before this step as its negatives.

    Args:
        temperature: InfoNCE temperature (0.2 in MoCo v2).
        queue_size: number of keys in the queue; at least one global batch of keys.
        momentum, momentum_schedule: EMA momentum of the key encoder; ``constant`` or
            ``cosine`` (to 1).
        symmetric: score both (v1 -> v2) and (v2 -> v1); the loss is their mean.
        proj_hidden_dim, proj_output_dim: the projector MLP.
        proj_output_bn: BatchNorm (no affine) on the projector's output, as in MoCo v3.
            Without it a narrow network on low-diversity data (the bundled digits) maps
            every image to one direction within a few steps and never recovers: its keys
            then fill the queue and the loss sits at log(queue_size + 1).
        **kwargs: :class:`~reco_lightning.methods.base.SSLMethod`'s arguments.
    """

    reco_mix = "mixup"  # why: docs/benchmarks.md, "How the defaults were chosen"
    #: no warm-up of ReCo's weights: chosen by cpu16v2's validation cells (docs/benchmarks.md)
    reco_warmup_epochs = 0.0

    def __init__(
        self,
        temperature: float = 0.2,
        queue_size: int = 4096,
        momentum: float = 0.99,
        momentum_schedule: str = "constant",
        symmetric: bool = False,
        proj_hidden_dim: int = 2048,
        proj_output_dim: int = 128,
        proj_output_bn: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if momentum_schedule not in ("constant", "cosine"):
            raise ConfigError(
                f"method.momentum_schedule={momentum_schedule!r}: choose 'constant' or 'cosine'"
            )
        self.temperature = positive("method.temperature", temperature)
        self.base_momentum = fraction("method.momentum", momentum)
        self.momentum_schedule = momentum_schedule
        self.symmetric = symmetric
        self.projector = mlp_head(
            self.feature_dim, proj_hidden_dim, proj_output_dim, output_bn=proj_output_bn
        )
        self.make_target_networks()
        self.queue = FeatureQueue(queue_size, proj_output_dim, name="method.queue_size")
        self.reco = self.make_reco(proj_output_dim, borrows_negatives=True)

    def method_step(self, view1: Tensor, view2: Tensor) -> MethodOutput:
        features1 = self.backbone(view1)
        q1 = F.normalize(self.projector(features1), dim=1)
        k2 = self.target_embedding(view2)
        # A clone, so enqueueing below cannot overwrite what autograd saved for backward.
        negatives = self.queue.features.clone()
        written = negatives[: self.queue.num_filled()]
        loss = info_nce_loss(q1, k2, negatives, self.temperature)
        if self.symmetric:
            q2 = self.online_embedding(view2)
            k1 = self.target_embedding(view1)
            loss = (loss + info_nce_loss(q2, k1, negatives, self.temperature)) / 2
            self.queue.enqueue(torch.cat([k1, k2]))
        else:
            self.queue.enqueue(k2)
        return MethodOutput(loss, q1, k2, features1, negatives=written)
