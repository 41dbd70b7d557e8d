"""ReCoMixin: ReCo's relation terms for any LightningModule that can embed an image batch.

A module gets ReCo by subclassing ``ReCoMixin`` before ``LightningModule``, providing
:meth:`~ReCoMixin.online_embedding` (and :meth:`~ReCoMixin.target_embedding` if it has a
momentum target network), calling :meth:`~ReCoMixin.setup_reco` in ``__init__`` and adding
:meth:`~ReCoMixin.reco_loss` to its loss. The mixin owns the relation bank (and a negative
queue where the method has none) and, for modules without a target network, an EMA
teacher of its own (:class:`~reco_lightning.reco.teacher.EMATeacher`). It logs
``train/loss_global`` and ``train/loss_local`` and the effective weights, and in
``on_train_batch_end`` moves its teacher (once per optimizer step) and enqueues the step's
keys (after each micro-batch's backward), so the batch is never scored against itself and
no buffer that autograd saved is overwritten before it is used.

Queue rows that were never written (the random vectors a queue starts with) are left out
of both terms; a term with fewer written rows than one global batch is skipped for that
step (logged as ``train/reco_global_skipped`` / ``train/reco_local_skipped``).

The extra passes (the weak view through the teacher, the mixed batch through the online
network) run in train mode, so they update BatchNorm running statistics like any other
forward pass; with ReCo's own EMA teacher those are the teacher's, which each EMA update
then overwrites with the online network's, as for MoCo's and BYOL's targets.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from .config import ReCoConfig
from ..utils.distributed import gather_without_grad, rank
from ..utils.momentum import scheduled_momentum
from ..losses.relation import global_relation_loss, interpolation_target, local_interpolation_loss
from .mixing import mix_views
from .queue import FeatureQueue
from .teacher import EMATeacher, trainable_children


@dataclass
class ReCoTerms:
    """The two unweighted terms and their weighted sum (what is added to the loss).

    A term that was skipped this step (too few written queue rows, or a weight of 0) is
    ``None`` and contributes nothing to ``weighted``.
    """

    global_: Tensor | None
    local: Tensor | None
    weighted: Tensor


class ReCoMixin:
    """Adds ReCo's global distribution and local interpolation terms to a LightningModule.

    Subclass it *before* ``lightning.LightningModule`` so its ``on_train_batch_end`` runs
    and then hands over to yours (it calls ``super()``).
    """

    reco_config: ReCoConfig | None = None
    #: ``method`` (the module's own target_embedding), ``ema`` (ReCo's EMA copy) or ``online``
    reco_teacher_kind: str | None = None

    # -- the functions a method provides ------------------------------------------------
    def online_embedding(self, images: Tensor) -> Tensor:
        """L2-normalised online embedding of ``images``, with gradient."""
        raise NotImplementedError(f"{type(self).__name__} must implement online_embedding(images)")

    def target_embedding(self, images: Tensor) -> Tensor:
        """L2-normalised embedding of ``images`` by the module's momentum target network.

        Implement it only if the module has one (MoCo, BYOL). Without it, ReCo keeps an
        EMA copy of the online network as its teacher (``reco.teacher=auto``).
        """
        raise NotImplementedError(f"{type(self).__name__} has no target network (no target_embedding)")

    def _has_target_network(self) -> bool:
        return type(self).target_embedding is not ReCoMixin.target_embedding

    # -- set-up ---------------------------------------------------------------------------
    def setup_reco(
        self,
        config: ReCoConfig | Mapping[str, Any] | None,
        embedding_dim: int,
        temperature: float = 0.2,
        negatives: FeatureQueue | None = None,
        teacher_modules: list[str] | None = None,
    ) -> None:
        """Create ReCo's queues and teacher; call in ``__init__`` after building the network.

        Args:
            config: the settings; ``None`` (or ``{"enabled": False}``) turns ReCo off and
                creates nothing, so the module is exactly the plain method.
            embedding_dim: dimension of the online and target embeddings.
            temperature: the local term's temperature when ``config.tau_local`` is unset;
                pass the method's own.
            negatives: a queue of target embeddings of strong views that the method already
                keeps and fills (MoCo's key queue). Without it the mixin keeps its own and
                fills it with the teacher's embeddings of the second strong view.
            teacher_modules: the children that ``online_embedding`` runs through, which
                ReCo's EMA teacher copies (default: every child with trainable parameters).
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
        if config.negatives == "batch":
            self._reco_owns_negatives = False
        elif negatives is None:
            self.reco_negatives = FeatureQueue(config.negatives_size, embedding_dim, name="reco.negatives_size")
            self._reco_owns_negatives = True
        else:
            # Kept out of the module tree so the borrowed queue is saved once, by its owner.
            self.__dict__["reco_negatives"] = negatives
            self._reco_owns_negatives = False
        self.reco_teacher_kind = self._resolve_teacher(config.teacher)
        if self.reco_teacher_kind == "ema":
            names = teacher_modules or trainable_children(self)  # type: ignore[arg-type]
            self.reco_teacher = EMATeacher(self, names)  # type: ignore[arg-type]

    def _resolve_teacher(self, choice: str) -> str:
        if choice == "auto":
            return "method" if self._has_target_network() else "ema"
        return choice

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

    # -- the teacher and the schedule -----------------------------------------------------
    def reco_teacher_embedding(self, images: Tensor) -> Tensor:
        """The teacher's normalised embedding of ``images``, without gradient."""
        with torch.no_grad():
            if self.reco_teacher_kind == "method":
                keys = self.target_embedding(images)
            elif self.reco_teacher_kind == "ema":
                keys = self.reco_teacher.embed(self, images)
            else:
                keys = self.online_embedding(images)
            return F.normalize(keys.detach(), dim=1)

    def _trainer_or_none(self) -> Any:
        return getattr(self, "_trainer", None)

    def _optimizer_steps(self) -> tuple[int | None, int, int]:
        """(global step or None without a Trainer, total steps, steps per epoch)."""
        trainer = self._trainer_or_none()
        if trainer is None:
            return None, 0, 0
        estimated = trainer.estimated_stepping_batches
        total = max(int(estimated), 1) if math.isfinite(estimated) else 0
        batches = trainer.num_training_batches
        if math.isfinite(batches) and batches > 0:
            per_epoch = math.ceil(batches / max(int(trainer.accumulate_grad_batches), 1))
        else:  # an iterable dataset of unknown length: spread the run's steps over its epochs
            per_epoch = max(total // max(int(trainer.max_epochs or 1), 1), 1)
        return int(trainer.global_step), total, per_epoch

    def reco_weights(self) -> tuple[float, float]:
        """``(w_global, w_local)`` now: raised linearly from 0 over ``reco.warmup_epochs``."""
        config = self.reco_config
        assert config is not None
        step, _, per_epoch = self._optimizer_steps()
        warmup_steps = config.warmup_epochs * per_epoch
        if step is None or warmup_steps <= 0:
            return config.w_global, config.w_local
        scale = min(step / warmup_steps, 1.0)
        return config.w_global * scale, config.w_local * scale

    def reco_teacher_momentum(self) -> float:
        """ReCo's own teacher's momentum now, on the method's schedule (``momentum_schedule``)."""
        config = self.reco_config
        assert config is not None
        step, total, _ = self._optimizer_steps()
        schedule = getattr(self, "momentum_schedule", "constant")
        return scheduled_momentum(config.teacher_momentum, schedule, step or 0, total)

    # -- the terms ------------------------------------------------------------------------
    def reco_loss(
        self,
        strong1: Tensor,
        strong2: Tensor,
        weak: Tensor,
        q1: Tensor | None = None,
        k2: Tensor | None = None,
    ) -> ReCoTerms:
        """Both relation terms for one batch, weighted; logs them and queues this step's keys.

        Pass ``q1 = online_embedding(strong1)`` and, when the teacher is the module's own
        target network, ``k2 = target_embedding(strong2)`` if the method already computed
        them: then ReCo costs one target pass (the weak view) and one online pass (the
        mixed batch). With ReCo's own EMA teacher ``k2`` is always the teacher's, one more
        target pass.
        """
        config = self.reco_config
        if config is None:
            raise RuntimeError("reco_loss called with ReCo off: call setup_reco with a config first")
        if self._reco_pending:
            rank_zero_warn(
                "ReCo's queues were not filled after the previous step: if you override "
                "on_train_batch_end, call super().on_train_batch_end(...) in it"
            )
        w_global, w_local = self.reco_weights()
        # Normalising again is a no-op for the normalised embeddings the contract asks for,
        # and keeps the temperatures meaningful if a user passes raw projector outputs.
        q1 = F.normalize(self.online_embedding(strong1) if q1 is None else q1, dim=1)
        if k2 is None or self.reco_teacher_kind != "method":
            k2 = self.reco_teacher_embedding(strong2)
        k2 = F.normalize(k2.detach(), dim=1)
        weak_keys = self.reco_teacher_embedding(weak)
        global_batch = weak_keys.shape[0] * self._world_size()

        weighted = q1.new_zeros((), dtype=torch.float32)
        loss_global = loss_local = None
        bank = self.relation_bank.filled()
        if w_global > 0 and bank.shape[0] >= global_batch:
            loss_global = global_relation_loss(q1, weak_keys, bank, config.tau_student, config.tau_teacher)
            weighted = weighted + w_global * loss_global

        negatives, exclude = self._local_negatives(k2, global_batch)
        mixed = None
        if w_local > 0 and negatives is not None:
            mixed = mix_views(strong1, strong2, config.mix, config.alpha)
            target = interpolation_target(q1, k2[mixed.permutation], mixed.lam)
            mixed_embedding = F.normalize(self.online_embedding(mixed.images), dim=1)
            if exclude is not None:
                exclude = exclude(mixed.permutation)
            loss_local = local_interpolation_loss(mixed_embedding, target, negatives, self.reco_tau_local, exclude)
            weighted = weighted + w_local * loss_local

        self._reco_pending = {"bank": weak_keys}
        if self._reco_owns_negatives:
            self._reco_pending["negatives"] = k2
        self._log_reco(loss_global, loss_local, w_global, w_local, mixed.lam if mixed is not None else None)
        return ReCoTerms(loss_global, loss_local, weighted)

    def _local_negatives(self, k2: Tensor, global_batch: int) -> tuple[Tensor | None, Any]:
        """The local term's negatives and, for batch negatives, a function of the mixing
        permutation that gives the columns to leave out; ``(None, None)`` while a queue
        holds fewer written rows than one global batch."""
        if self.reco_config.negatives == "batch":  # type: ignore[union-attr]
            keys = gather_without_grad(k2)
            offset = rank() * k2.shape[0]

            def exclude(permutation: Tensor) -> Tensor:
                # a row's own key and its mixing partner's are parts of its target, not negatives
                rows = torch.arange(k2.shape[0], device=k2.device)
                mask = torch.zeros(k2.shape[0], keys.shape[0], dtype=torch.bool, device=k2.device)
                mask[rows, offset + rows] = True
                mask[rows, offset + permutation] = True
                return mask

            return keys, exclude
        queued = self.reco_negatives.filled()
        return (queued, None) if queued.shape[0] >= global_batch else (None, None)

    def _world_size(self) -> int:
        trainer = self._trainer_or_none()
        return int(trainer.world_size) if trainer is not None else 1

    def _log_reco(
        self, loss_global: Tensor | None, loss_local: Tensor | None, w_global: float, w_local: float, lam: float | None
    ) -> None:
        log = getattr(self, "log", None)
        if not callable(log) or self._trainer_or_none() is None:
            return
        if loss_global is not None:
            log("train/loss_global", loss_global.detach(), on_step=True, on_epoch=True, prog_bar=True)
        if loss_local is not None:
            log("train/loss_local", loss_local.detach(), on_step=True, on_epoch=True, prog_bar=True)
        if lam is not None:
            log("train/reco_lambda", lam, on_step=False, on_epoch=True)
        log("train/reco_global_skipped", float(loss_global is None and w_global > 0), on_step=False, on_epoch=True)
        log("train/reco_local_skipped", float(loss_local is None and w_local > 0), on_step=False, on_epoch=True)
        log("train/reco_w_global", w_global, on_step=False, on_epoch=True)
        log("train/reco_w_local", w_local, on_step=False, on_epoch=True)

    def reco_update_queues(self) -> None:
        """Enqueue the keys of the last :meth:`reco_loss` call (gathered from all ranks)."""
        pending, self._reco_pending = self._reco_pending, {}
        if "bank" in pending:
            self.relation_bank.enqueue(pending["bank"])
        if "negatives" in pending:
            self.reco_negatives.enqueue(pending["negatives"])

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """After the backward pass: move ReCo's own teacher once per optimizer step, and fill
        the queues with this micro-batch's keys."""
        if self.reco_enabled:
            if self.reco_teacher_kind == "ema":
                momentum = self.reco_teacher_momentum()
                step, _, _ = self._optimizer_steps()
                self.reco_teacher.update(self, momentum, step)  # type: ignore[arg-type]
            self.reco_update_queues()
        parent = getattr(super(), "on_train_batch_end", None)
        if parent is not None:
            parent(outputs, batch, batch_idx)
