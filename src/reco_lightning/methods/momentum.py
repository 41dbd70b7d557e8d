"""The EMA targets of a method, as data: a method lists its (online, target) pairs and one
hook moves them once per optimizer step.

A method overrides :meth:`MomentumTargets.momentum_pairs` (MoCo: backbone and projector;
BYOL: the same plus nothing for its predictor); :meth:`MomentumTargets.on_train_batch_end`
updates every pair when an optimizer step has passed (with ``accumulate_grad_batches=N``,
after every N-th micro-batch), on the method's momentum schedule. ReCo's own teacher moves
inside ReCo's call, not here.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.momentum import OncePerOptimizerStep, ema_update, make_target, scheduled_momentum


class MomentumTargets(L.LightningModule):
    """The once-per-optimizer-step EMA update of :meth:`momentum_pairs`."""

    #: base momentum of the method's EMA targets
    base_momentum: float = 0.99
    #: ``constant`` or ``cosine`` (momentum raised to 1 over training); ReCo's own teacher
    #: follows it too
    momentum_schedule: str = "constant"

    def __init__(self) -> None:
        super().__init__()
        self.momentum_gate = OncePerOptimizerStep()

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """The method's (online, EMA target) module pairs; none by default (SimCLR)."""
        return []

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole run (for schedules); 0 without a Trainer, which
        leaves the momentum at its base value."""
        return 0 if self._trainer is None else max(int(self.trainer.estimated_stepping_batches), 1)

    def current_momentum(self) -> float:
        """The targets' momentum at this step, on the method's schedule."""
        return scheduled_momentum(
            self.base_momentum, self.momentum_schedule, self.global_step, self.total_steps
        )

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        pairs = self.momentum_pairs()
        step = self.global_step if self._trainer is not None else None
        if pairs and self.momentum_gate.due(step):
            momentum = self.current_momentum()
            for online, target in pairs:
                ema_update(target, online, momentum)
            self.log("train/momentum", momentum, on_step=False, on_epoch=True)


class ProjectedTarget(MomentumTargets):
    """A momentum copy of ``backbone`` and ``projector`` (MoCo, BYOL): call
    :meth:`make_target_networks` once both exist; the target embedding is the copy's
    normalised projection."""

    backbone: nn.Module
    projector: nn.Module

    def make_target_networks(self) -> None:
        self.target_backbone = make_target(self.backbone)
        self.target_projector = make_target(self.projector)

    @torch.no_grad()
    def target_embedding(self, images: Tensor) -> Tensor:
        return F.normalize(self.target_projector(self.target_backbone(images)), dim=1)

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.target_backbone), (self.projector, self.target_projector)]


__all__ = ["MomentumTargets", "ProjectedTarget"]
