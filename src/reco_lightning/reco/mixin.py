"""ReCoMixin: ReCo's relation terms for your own LightningModule, in three lines of glue.

The mixin holds no state and no hooks (so it may come before or after
``LightningModule``): ReCo's state is in the :class:`~reco_lightning.reco.module.ReCo` your
model holds. A model with ReCo

1. subclasses ``ReCoMixin``;
2. has ``online_embedding(images)`` (and ``target_embedding(images)`` if it has a momentum
   target network) and holds ``self.reco = ReCo(settings, embedding_dim, self)``;
3. adds ``self.reco_loss(batch)`` to its loss, which calls ``self.reco`` with where
   training stands and logs the terms.

>>> import lightning as L, torch, torch.nn.functional as F
>>> from torch import nn
>>> class Model(ReCoMixin, L.LightningModule):
...     def __init__(self):
...         super().__init__()
...         self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(12, 8))
...         self.reco = ReCo({"bank_size": 16, "negatives_size": 16}, embedding_dim=8, owner=self)
...     def online_embedding(self, images):
...         return F.normalize(self.encoder(images), dim=1)
>>> model = Model()
>>> views = [torch.randn(4, 3, 2, 2) for _ in range(3)]
>>> batch = {"strong": views[:2], "weak": views[2]}
>>> model.reco_loss(batch).shape           # 0 until the banks hold a batch of keys
torch.Size([])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from ..errors import ConfigError
from .module import ReCo, ReCoTerms, TrainingProgress


def training_progress(module: Any) -> TrainingProgress:
    """Where training stands, from ``module``'s Trainer; ``TrainingProgress()`` without one."""
    trainer = getattr(module, "_trainer", None)
    if trainer is None:
        return TrainingProgress()
    estimated = trainer.estimated_stepping_batches
    total = max(int(estimated), 1) if math.isfinite(estimated) else 0
    batches = trainer.num_training_batches
    if math.isfinite(batches) and batches > 0:
        per_epoch = math.ceil(batches / max(int(trainer.accumulate_grad_batches), 1))
    else:  # an iterable dataset of unknown length: spread the run's steps over its epochs
        per_epoch = max(total // max(int(trainer.max_epochs or 1), 1), 1)
    return TrainingProgress(int(trainer.global_step), total, per_epoch, int(trainer.world_size))


def log_reco_terms(module: Any, terms: ReCoTerms) -> None:
    """Log one ReCo call through ``module.log``: the terms, the weights in effect (the
    warm-up), the mixing coefficient, and whether a term was skipped for want of keys."""
    log = getattr(module, "log", None)
    if not callable(log) or getattr(module, "_trainer", None) is None:
        return
    if terms.global_ is not None:
        log("train/loss_global", terms.global_.detach(), on_step=True, on_epoch=True, prog_bar=True)
    if terms.local is not None:
        log("train/loss_local", terms.local.detach(), on_step=True, on_epoch=True, prog_bar=True)
    if terms.lam is not None:
        log("train/reco_lambda", terms.lam, on_step=False, on_epoch=True)
    log("train/reco_global_skipped", float(terms.global_skipped), on_step=False, on_epoch=True)
    log("train/reco_local_skipped", float(terms.local_skipped), on_step=False, on_epoch=True)
    log("train/reco_w_global", terms.w_global, on_step=False, on_epoch=True)
    log("train/reco_w_local", terms.w_local, on_step=False, on_epoch=True)


def split_views(views: Mapping[str, Any] | Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """``(strong1, strong2, weak)`` from a batch of :class:`~reco_lightning.SSLDataModule`
    (``{"strong": [v1, v2], "weak": w, ...}``) or a sequence of the three views."""
    if isinstance(views, Mapping):
        if "weak" not in views:
            raise ConfigError(
                "ReCo needs a weak view and the batch has none: build the datamodule with "
                "weak_view=True"
            )
        strong1, strong2 = views["strong"]
        return strong1, strong2, views["weak"]
    strong1, strong2, weak = views
    return strong1, strong2, weak


class ReCoMixin:
    """Gives a LightningModule :meth:`reco_loss`; the state is in ``self.reco`` (a ReCo)."""

    reco: ReCo | None

    def reco_loss(
        self,
        views: Mapping[str, Any] | Sequence[Tensor],
        q1: Tensor | None = None,
        k2: Tensor | None = None,
        negatives: Tensor | None = None,
        method_loss: Tensor | None = None,
    ) -> Tensor:
        """ReCo's weighted terms for this batch (add it to your loss), logged as ``train/...``.

        Args:
            views: the batch (``{"strong": [v1, v2], "weak": w}``) or ``(v1, v2, weak)``.
            q1, k2: ``online_embedding(v1)`` and ``target_embedding(v2)`` if your step has
                them already: ReCo then costs one teacher pass and one online pass fewer.
            negatives: your own queue's written rows, taken before this step's keys went in,
                for a ReCo built with ``borrows_negatives=True`` (a MoCo-like method).
            method_loss: your method's loss; needed with ``reco.scale=relative``, which
                weighs each term against it.
        """
        return self.reco_terms(views, q1, k2, negatives, method_loss).weighted

    def reco_terms(
        self,
        views: Mapping[str, Any] | Sequence[Tensor],
        q1: Tensor | None = None,
        k2: Tensor | None = None,
        negatives: Tensor | None = None,
        method_loss: Tensor | None = None,
    ) -> ReCoTerms:
        """:meth:`reco_loss`, returning everything the call computed (each term, the weights
        in effect) for a caller that checks or measures the terms, as the built-in methods do."""
        reco = getattr(self, "reco", None)
        if not isinstance(reco, ReCo):
            raise RuntimeError(
                f"{type(self).__name__}.reco_loss needs a ReCo module: in __init__, after building "
                "the "
                f"network, set self.reco = ReCo(settings, embedding_dim, self)"
            )
        strong1, strong2, weak = split_views(views)
        terms = reco(
            self,
            strong1,
            strong2,
            weak,
            q1=q1,
            k2=k2,
            negatives=negatives,  # type: ignore[arg-type]
            progress=training_progress(self),
            method_loss=method_loss,
        )
        log_reco_terms(self, terms)
        return terms
