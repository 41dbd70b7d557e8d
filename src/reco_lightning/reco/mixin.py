"""ReCoMixin: ReCo's relation terms for any LightningModule that can embed an image batch.

A module gets ReCo by subclassing ``ReCoMixin`` before ``LightningModule``, providing
:meth:`~ReCoMixin.online_embedding` and :meth:`~ReCoMixin.target_embedding`, calling
:meth:`~ReCoMixin.setup_reco` in ``__init__`` and adding :meth:`~ReCoMixin.reco_loss` to its
loss. The mixin owns the relation bank (and a negative queue where the method has none),
logs ``train/loss_global`` and ``train/loss_local``, and enqueues the step's keys in
``on_train_batch_end``, after the backward pass (with gradient accumulation: after each
micro-batch's backward), so the batch is never scored against itself and no buffer that
autograd saved is overwritten before it is used.

The extra passes (the weak view through the target, the mixed batch through the online
network) run in train mode, so they update BatchNorm running statistics like any other
forward pass; for methods whose target is the online network (SimCLR) that includes the
weak views.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from .config import ReCoConfig
from .losses import global_relation_loss, interpolation_target, local_interpolation_loss
from .mixing import mix_views
from .queue import FeatureQueue


@dataclass
class ReCoTerms:
    """The two unweighted terms and their weighted sum (what is added to the loss)."""

    global_: Tensor
    local: Tensor
    weighted: Tensor


class ReCoMixin:
    """Adds ReCo's global distribution and local interpolation terms to a LightningModule.

    Subclass it *before* ``lightning.LightningModule`` so its ``on_train_batch_end`` runs
    and then hands over to yours (it calls ``super()``).
    """

    reco_config: ReCoConfig | None = None

    # -- the two functions a method provides -------------------------------------------
    def online_embedding(self, images: Tensor) -> Tensor:
        """L2-normalised online embedding of ``images``, with gradient."""
        raise NotImplementedError(f"{type(self).__name__} must implement online_embedding(images)")

    def target_embedding(self, images: Tensor) -> Tensor:
        """L2-normalised target embedding of ``images``, without gradient.

        The momentum encoder for MoCo and BYOL; the online network under ``no_grad`` for
        methods without one (SimCLR).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement target_embedding(images)")

    # -- set-up ---------------------------------------------------------------------------
    def setup_reco(
        self,
        config: ReCoConfig | Mapping[str, Any] | None,
        embedding_dim: int,
        temperature: float = 0.2,
        negatives: FeatureQueue | None = None,
    ) -> None:
        """Create ReCo's queues; call in ``__init__`` after ``super().__init__()``.

        Args:
            config: the settings; ``None`` (or ``{"enabled": False}``) turns ReCo off and
                creates nothing, so the module is exactly the plain method.
            embedding_dim: dimension of the online and target embeddings.
            temperature: the local term's temperature when ``config.tau_local`` is unset;
                pass the method's own.
            negatives: a queue of target embeddings of strong views that the method already
                keeps and fills (MoCo's key queue). Without it the mixin keeps its own and
                fills it with the target embeddings of the second strong view.
        """
        self._check_base_order()
        if isinstance(config, DictConfig):
            config = OmegaConf.to_container(config, resolve=True)  # type: ignore[assignment]
        if config is None or isinstance(config, Mapping):
            config = ReCoConfig.from_mapping(config)
        if config is not None and not isinstance(config, ReCoConfig):
            raise TypeError(f"setup_reco takes a ReCoConfig, a mapping or None, not {type(config).__name__}")
        self.reco_config = config
        self._reco_pending: dict[str, Tensor] = {}
        if config is None:
            return
        self.reco_tau_local = config.tau_local if config.tau_local is not None else temperature
        self.relation_bank = FeatureQueue(config.bank_size, embedding_dim, name="reco.bank_size")
        if negatives is None:
            self.reco_negatives = FeatureQueue(config.negatives_size, embedding_dim, name="reco.negatives_size")
            self._reco_owns_negatives = True
        else:
            # Kept out of the module tree so the borrowed queue is saved once, by its owner.
            self.__dict__["reco_negatives"] = negatives
            self._reco_owns_negatives = False

    def _check_base_order(self) -> None:
        """ReCoMixin must precede LightningModule, or its on_train_batch_end never runs."""
        import lightning as L

        mro = type(self).__mro__
        if L.LightningModule in mro and mro.index(L.LightningModule) < mro.index(ReCoMixin):
            raise TypeError(
                f"{type(self).__name__} lists LightningModule before ReCoMixin: write "
                f"`class {type(self).__name__}(ReCoMixin, LightningModule)` so the mixin can fill its queues"
            )

    @property
    def reco_enabled(self) -> bool:
        return self.reco_config is not None

    # -- the terms ------------------------------------------------------------------------
    def reco_loss(
        self,
        strong1: Tensor,
        strong2: Tensor,
        weak: Tensor,
        q1: Tensor | None = None,
        k2: Tensor | None = None,
    ) -> ReCoTerms:
        """Both relation terms for one batch; logs them and queues this step's keys.

        Pass ``q1 = online_embedding(strong1)`` and ``k2 = target_embedding(strong2)`` when
        the method already computed them (they are recomputed otherwise): then ReCo costs
        just one target pass (the weak view) and one online pass (the mixed batch).
        """
        config = self.reco_config
        if config is None:
            raise RuntimeError("reco_loss called with ReCo off: call setup_reco with a config first")
        if self._reco_pending:
            rank_zero_warn(
                "ReCo's queues were not filled after the previous step: if you override "
                "on_train_batch_end, call super().on_train_batch_end(...) in it"
            )
        # Normalising again is a no-op for the normalised embeddings the contract asks for,
        # and keeps the temperatures meaningful if a user passes raw projector outputs.
        q1 = F.normalize(self.online_embedding(strong1) if q1 is None else q1, dim=1)
        with torch.no_grad():
            k2 = F.normalize(self.target_embedding(strong2) if k2 is None else k2.detach(), dim=1)
            weak_keys = F.normalize(self.target_embedding(weak), dim=1)

        loss_global = global_relation_loss(
            q1, weak_keys, self.relation_bank.features, config.tau_student, config.tau_teacher
        )

        mixed = mix_views(strong1, strong2, config.mix, config.alpha)
        target = interpolation_target(q1, k2[mixed.permutation], mixed.lam)
        mixed_embedding = F.normalize(self.online_embedding(mixed.images), dim=1)
        loss_local = local_interpolation_loss(
            mixed_embedding, target, self.reco_negatives.features, self.reco_tau_local
        )

        self._reco_pending = {"bank": weak_keys}
        if self._reco_owns_negatives:
            self._reco_pending["negatives"] = k2

        log = getattr(self, "log", None)
        if callable(log):
            log("train/loss_global", loss_global.detach(), on_step=True, on_epoch=True, prog_bar=True)
            log("train/loss_local", loss_local.detach(), on_step=True, on_epoch=True, prog_bar=True)
            log("train/reco_lambda", mixed.lam, on_step=False, on_epoch=True)
        weighted = config.w_global * loss_global + config.w_local * loss_local
        return ReCoTerms(loss_global, loss_local, weighted)

    def reco_update_queues(self) -> None:
        """Enqueue the keys of the last :meth:`reco_loss` call (gathered from all ranks)."""
        pending, self._reco_pending = self._reco_pending, {}
        if "bank" in pending:
            self.relation_bank.enqueue(pending["bank"])
        if "negatives" in pending:
            self.reco_negatives.enqueue(pending["negatives"])

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """After the backward pass: fill the queues with this step's keys."""
        if self.reco_enabled:
            self.reco_update_queues()
        parent = getattr(super(), "on_train_batch_end", None)
        if parent is not None:
            parent(outputs, batch, batch_idx)
