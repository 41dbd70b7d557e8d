"""What the built-in methods share: backbone, optimizer and schedule, the online linear
probe, and ReCo through the :class:`~reco_lightning.reco.ReCoMixin` call a user module makes.

A method subclasses :class:`SSLMethod` and implements :meth:`SSLMethod.method_step`,
``online_embedding`` and, with a momentum target, ``target_embedding`` and
``momentum_pairs`` (:class:`~.momentum.MomentumTargets`). Checkpoint records are
:class:`~.checkpointing.CheckpointIdentity`'s, the validation measures a callback
(:class:`~reco_lightning.metrics.monitor.ValidationMonitor`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from ..errors import ConfigError, positive, whole_number
from ..metrics.diagnostics import spread_step_due, term_gradient_shares
from ..metrics.monitor import ValidationMonitor
from ..models import build_backbone, compile_in_place, trainable_children
from ..reco import ReCo, ReCoConfig, ReCoMixin
from ..run.checkpoints import last_checkpoint
from ..utils.optim import build_optimizer, split_decay_groups, warmup_cosine_scheduler
from .checkpointing import CheckpointIdentity
from .guards import check_finite_loss
from .momentum import MomentumTargets
from .output import MethodOutput


class SSLMethod(CheckpointIdentity, MomentumTargets, ReCoMixin):
    """Base LightningModule of the built-in self-supervised methods.

    Args:
        num_classes: classes of the labelled validation data (online probe, kNN).
        backbone: a ResNet name (``resnet18``, ``resnet34``, ``resnet50``).
        backbone_width: channels of the first stage; 64 is torchvision's ResNet.
        small_stem: 3x3 stride-1 stem without max-pool, for images of 64 px or less.
        zero_init_residual: start every residual block as its shortcut (the last
            BatchNorm's scale at zero); ``False`` is torchvision's initialisation.
        channels_last: keep the backbone's weights and inputs in channels-last memory format.
        optimizer: ``sgd`` or ``lars``.
        lr: peak learning rate (already scaled to the global batch by the caller).
        weight_decay: applied to weights, not to biases and norm parameters.
        sgd_momentum: momentum of SGD/LARS.
        warmup_epochs: linear warm-up length, then a cosine decay to zero.
        classifier_lr: learning rate of the online linear probe (no weight decay).
        knn_k, knn_temperature: the weighted kNN monitor's neighbours and temperature.
        term_grad_steps: steps per epoch on which each term's own gradient norm on the
            backbone is logged (``train/grad_norm_*``, ``train/grad_share_*``); each costs
            a backward pass per term; 0 = off; skipped under DDP.
        reco: ReCo's settings, a :class:`~reco_lightning.reco.ReCoConfig` or a mapping of
            its fields (checkpoints keep them as a plain dict); ``None`` = off.
    """

    #: ReCo's module, or None when ReCo is off (see :meth:`make_reco`)
    reco: ReCo | None
    #: the method's projection head (the default :meth:`online_embedding` runs it)
    projector: nn.Module
    #: the method's temperature, used by ReCo's local term unless ``reco.tau_local`` is set.
    temperature: float = 0.2
    #: how ReCo's local term mixes the two strong views under ``reco.mix=auto``
    reco_mix: str = "cutmix"
    #: how ReCo's terms weigh against the method loss under ``reco.scale=auto``: ``absolute``
    #: suits a method loss of order 1-10, ``relative`` one far from it (see ReCoConfig)
    reco_scale: str = "absolute"
    #: where ReCo's local term takes its negatives under ``reco.negatives=auto``: ``queue``
    #: (MoCo lends its own) or ``batch`` (this global batch's other teacher keys)
    reco_negatives: str = "queue"
    #: epochs over which ReCo's weights rise from 0 under ``reco.warmup_epochs=null``
    reco_warmup_epochs: float = 2.0
    #: ReCo's ``(w_global, w_local)`` where ``reco.w_global`` / ``reco.w_local`` are null
    reco_weights: tuple[float, float] = (1.0, 1.0)
    #: ReCo's teacher under ``reco.teacher=auto``: ``auto`` (the momentum target if the
    #: method has one, else ReCo's EMA copy), ``ema`` or ``online``
    reco_teacher: str = "auto"

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet18",
        backbone_width: int = 64,
        small_stem: bool = False,
        zero_init_residual: bool = True,
        channels_last: bool = False,
        compile_backbone: bool = False,
        optimizer: str = "sgd",
        optimizer_kernel: str = "auto",
        lr: float = 0.05,
        weight_decay: float = 5e-4,
        sgd_momentum: float = 0.9,
        warmup_epochs: float = 0.0,
        classifier_lr: float = 0.1,
        knn_k: int = 200,
        knn_temperature: float = 0.1,
        term_grad_steps: int = 0,
        reco: ReCoConfig | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        #: ReCo's checked settings, or None when ReCo is off: decided here, once
        self.reco_config = ReCoConfig.from_mapping(reco)
        self.save_hyperparameters(ignore=["reco"])
        self.hparams["reco"] = None if self.reco_config is None else asdict(self.reco_config)
        if num_classes < 2:
            raise ConfigError(
                f"num_classes={num_classes}: the validation data needs at least two classes"
            )
        positive("knn.k", knn_k), positive("knn.temperature", knn_temperature)
        hint = "steps per epoch that measure each term's gradient; 0 = off"
        whole_number("diagnostics.term_grad_steps", term_grad_steps, 0, hint)
        self.backbone, self.feature_dim = build_backbone(
            backbone, backbone_width, small_stem, zero_init_residual
        )
        if channels_last:  # before methods copy the backbone into their target networks
            self.backbone.to(memory_format=torch.channels_last)
        self.classifier = nn.Linear(self.feature_dim, num_classes)
        self.num_classes = num_classes
        self.train_linear_acc = MulticlassAccuracy(num_classes, average="micro")
        self.reco = None

    def make_reco(self, embedding_dim: int, **options: Any) -> ReCo | None:
        """ReCo's module, or None when ReCo is off; call it last in ``__init__``, when the
        networks ReCo's EMA teacher may copy exist. ``options`` go to
        :class:`~reco_lightning.reco.ReCo`; the defaults are the method's temperature,
        momentum schedule, mixing, scale, negatives, warm-up, weights, teacher and trained
        children (all but the probe)."""
        if self.reco_config is None:
            return None
        defaults = {
            "teacher_modules": trainable_children(self, lambda name: name == "classifier"),
            "temperature": self.temperature,
            "momentum_schedule": self.momentum_schedule,
            "mix": self.reco_mix,
            "scale": self.reco_scale,
            "negatives": self.reco_negatives,
            "warmup_epochs": self.reco_warmup_epochs,
            "weights": self.reco_weights,
            "teacher": self.reco_teacher,
        }
        return ReCo(self.reco_config, embedding_dim, self, **{**defaults, **options})

    @property
    def reco_enabled(self) -> bool:
        return self.reco is not None

    # -- what a method implements ------------------------------------------------------
    def method_step(self, view1: Tensor, view2: Tensor) -> MethodOutput:
        """The method's own loss from two strong views of the same images."""
        raise NotImplementedError

    def online_embedding(self, images: Tensor) -> Tensor:
        """The normalised projection of the backbone's features (a method with a predictor
        overrides it); what ReCo scores and its EMA teacher copies."""
        return F.normalize(self.projector(self.backbone(images)), dim=1)

    def forward(self, images: Tensor) -> Tensor:
        """Backbone features, what downstream tasks use."""
        return self.backbone(images)

    def setup(self, stage: str) -> None:
        """``compile_backbone``: compile the backbones here, after any target was copied."""
        if self.hparams.get("compile_backbone"):
            compile_in_place(getattr(self, n, None) for n in ("backbone", "target_backbone"))

    def _memory_format(self, images: Tensor) -> Tensor:
        """Images in the backbone's memory format (see benchmarks/channels_last.py)."""
        channels_last = self.hparams.get("channels_last")
        return images.contiguous(memory_format=torch.channels_last) if channels_last else images

    # -- training -----------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        view1, view2 = (self._memory_format(v) for v in batch["strong"])
        views: dict[str, Any] = {"strong": [view1, view2]}
        if "weak" in batch:
            views["weak"] = self._memory_format(batch["weak"])
        output = self.method_step(view1, view2)
        loss = output.loss
        terms = {"train/loss_method": output.loss}
        self.log("train/loss_method", loss.detach(), on_step=True, on_epoch=True, prog_bar=True)
        if self.reco is not None:  # the path a user module takes: ReCoMixin's
            reco = self.reco_terms(
                views,
                q1=output.q1,
                k2=output.k2,
                negatives=output.negatives,
                method_loss=output.loss,
            )
            loss = loss + reco.weighted
            terms.update({"train/loss_global": reco.global_, "train/loss_local": reco.local})
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=True)
        check_finite_loss(
            loss,
            terms,
            f"global step {self.global_step} (epoch {self.current_epoch}, batch {batch_idx})",
            last_checkpoint(self._trainer),
            self._reduce_min if self._distributed() else None,
        )
        if self._term_grads_due(batch_idx):
            parts = {} if self.reco is None else reco.weighted_terms()
            self._log_term_grads({"method": output.loss, **parts})

        logits = self.classifier(output.features.detach())
        probe_loss = F.cross_entropy(logits, batch["label"])
        self.train_linear_acc(logits.detach(), batch["label"])
        self.log("train/linear_loss", probe_loss.detach(), on_step=False, on_epoch=True)
        self.log("train/linear_acc", self.train_linear_acc, on_step=False, on_epoch=True)
        return loss + probe_loss

    def _distributed(self) -> bool:
        return self._trainer is not None and self.trainer.world_size > 1

    def _reduce_min(self, value: Tensor) -> Tensor:  # under DDP: did every rank stay finite?
        return self.trainer.strategy.reduce(value, reduce_op="min")

    def _term_grads_due(self, batch_idx: int) -> bool:
        """Whether this step is one of the ``term_grad_steps`` spread over the epoch."""
        steps = int(self.hparams.get("term_grad_steps") or 0)
        if self._trainer is None or self._distributed():
            return False
        return spread_step_due(batch_idx, self.trainer.num_training_batches, steps)

    def _log_term_grads(self, weighted: dict[str, Tensor | None]) -> None:
        """Log each weighted term's own gradient norm on the backbone and its share."""
        for name, value in term_gradient_shares(weighted, self.backbone.parameters()).items():
            self.log(f"train/{name}", value, on_step=False, on_epoch=True)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups of everything but the online probe: weights, and
        biases/norm parameters (no decay, no LARS). BYOL overrides it for its predictor."""
        children = {name: m for name, m in self.named_children() if name != "classifier"}
        return split_decay_groups(nn.ModuleDict(children))

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        probe = {"params": list(self.classifier.parameters()), "lr": hp.classifier_lr}
        groups = [*self.parameter_groups(), {**probe, "weight_decay": 0.0, "lars_exclude": True}]
        optimizer = build_optimizer(
            hp.optimizer, groups, hp.lr, hp.weight_decay, hp.sgd_momentum, hp.optimizer_kernel
        )
        epochs = max(int(self.trainer.max_epochs or 1), 1)
        warmup_steps = int(self.hparams.warmup_epochs * self.total_steps / epochs)
        schedule = warmup_cosine_scheduler(optimizer, self.total_steps, warmup_steps)
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    # -- validation: the features the ValidationMonitor measures ----------------------------
    def validation_step(
        self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> Tensor:
        """The backbone features of a labelled batch (loader 0: the kNN bank; 1: queries)."""
        return self.backbone(self._memory_format(batch[0])).float()

    def configure_callbacks(self) -> list[L.Callback]:
        """The kNN, probe and relation measures of each validation epoch."""
        if self._trainer is not None and any(
            isinstance(callback, ValidationMonitor) for callback in self.trainer.callbacks
        ):
            return []  # a second fit or validate of the same Trainer keeps the first
        hparams = self.hparams
        return [ValidationMonitor(self.num_classes, hparams.knn_k, hparams.knn_temperature)]
