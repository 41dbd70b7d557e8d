"""Barlow Twins (Zbontar et al., 2021): the two views' cross-correlation driven to identity.

Written against the seam a user's method meets: this module and ``conf/method/barlow.yaml``
are all that make ``+method=barlow`` (the registry and the schema find it), and ReCo comes
in through the same call as everywhere (``reco_terms``, in the base class's step).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from ..errors import positive
from ..models import mlp_head
from .base import MethodOutput, SSLMethod
from .registry import register_method


def barlow_twins_loss(z1: Tensor, z2: Tensor, lambda_offdiag: float = 0.0051) -> Tensor:
    """``sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2``, where ``C = z1^T z2 / N`` is
    the cross-correlation of the two views' projections after standardising each dimension
    over the batch (a BatchNorm without affine parameters, eps 1e-5), in float32.

    At the start each of the D diagonal terms is near 1, so the loss is about D: ~2,000 for
    the paper's 2,048-d projector, two to three orders of magnitude above an InfoNCE loss.

    >>> import torch
    >>> z = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])   # two dimensions, anti-correlated
    >>> round(barlow_twins_loss(z, z, lambda_offdiag=0.5).item(), 4)   # C = [[1, -1], [-1, 1]]
    1.0
    """
    n = z1.shape[0]
    standardised = [F.batch_norm(z.float(), None, None, training=True, eps=1e-5) for z in (z1, z2)]
    correlation = standardised[0].T @ standardised[1] / n
    diagonal = correlation.diagonal()
    on_diagonal = (1.0 - diagonal).pow(2).sum()
    off_diagonal = correlation.pow(2).sum() - diagonal.pow(2).sum()
    return on_diagonal + lambda_offdiag * off_diagonal


@register_method("barlow")
class BarlowTwins(SSLMethod):
    """Barlow Twins; the cross-correlation is taken over the global batch (gathered with
    gradients under DDP, as the paper's all-reduce does).

    The loss is ~2,000 where the relation terms are a few nats, so ReCo weighs its terms
    against it (``reco_scale = "relative"``: each term is worth ``w`` times the loss). With
    no target network ReCo keeps an EMA copy of backbone and projector as its teacher, and
    the local term's temperature is the base class's 0.2 (the method has none).

    >>> model = BarlowTwins(num_classes=10, backbone_width=8, small_stem=True,
    ...                     proj_hidden_dim=32, proj_output_dim=16)
    >>> import torch
    >>> model.method_step(torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)).loss.item() > 0
    True

    Args:
        proj_hidden_dim, proj_output_dim: the projector MLP (the paper: 8,192 and 8,192).
        lambda_offdiag: the weight of the redundancy (off-diagonal) terms.
        **kwargs: :class:`~reco_lightning.methods.base.SSLMethod`'s arguments.
    """

    reco_scale = "relative"

    def __init__(
        self,
        proj_hidden_dim: int = 2048,
        proj_output_dim: int = 2048,
        lambda_offdiag: float = 0.0051,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.lambda_offdiag = positive("method.lambda_offdiag", lambda_offdiag)
        self.projector = mlp_head(self.feature_dim, proj_hidden_dim, proj_output_dim)
        self.reco = self.make_reco(proj_output_dim, teacher_modules=["backbone", "projector"])

    def _global_batch(self, z: Tensor) -> Tensor:
        if self._trainer is None or self.trainer.world_size == 1:
            return z
        return self.all_gather(z, sync_grads=True).flatten(0, 1)

    def method_step(self, view1: Tensor, view2: Tensor) -> MethodOutput:
        features1 = self.backbone(view1)
        z1 = self.projector(features1)
        z2 = self.projector(self.backbone(view2))
        loss = barlow_twins_loss(
            self._global_batch(z1), self._global_batch(z2), self.lambda_offdiag
        )
        return MethodOutput(
            loss, F.normalize(z1, dim=1), F.normalize(z2, dim=1).detach(), features1
        )
