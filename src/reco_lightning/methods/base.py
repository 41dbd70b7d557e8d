"""What the built-in methods share: backbone, optimizer and schedule, online linear probe,
kNN monitor, EMA updates, checkpoint checks, and the call of ReCo.

A method subclasses :class:`SSLMethod` and implements :meth:`SSLMethod.method_step`,
``online_embedding`` and, with a momentum target network, ``target_embedding``. ReCo is
not built in: a method with ``reco`` settings holds a :class:`~reco_lightning.reco.ReCo`
(``self.reco``, made by :meth:`make_reco`), which the training step calls.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from ..errors import ConfigError, NonFiniteLossError, positive
from ..metrics.diagnostics import relation_diagnostics, view_pair_features
from ..metrics.knn import KNNMonitor
from ..models import build_backbone
from ..reco import ReCo, ReCoMixin
from ..reco.teacher import trainable_children
from ..utils.momentum import OncePerOptimizerStep, ema_update, scheduled_momentum
from ..utils.optim import build_optimizer, split_decay_groups, warmup_cosine
from ..utils.rng import rng_states, set_rng_states
from .registry import METHODS

#: validation samples the per-epoch relation diagnostics use (pairwise cost grows as n^2)
DIAGNOSTIC_SAMPLES = 5000
#: validation images whose two strong views give the per-epoch alignment
ALIGNMENT_IMAGES = 256
#: the checkpoint entry that records the ``+method=`` name of the method that wrote it
METHOD_KEY = "reco_lightning_method"


def method_name(cls: type) -> str:
    """The ``+method=`` name of ``cls`` (``moco`` for MoCo and its subclasses); the class's
    own name for a method outside the registry."""
    for klass in cls.__mro__:
        for name, registered in METHODS.items():
            if klass is registered:
                return name
    return cls.__name__


def checkpoint_method(checkpoint: Mapping[str, Any]) -> str | None:
    """The ``+method=`` name of the method that wrote ``checkpoint`` (:data:`METHOD_KEY`,
    which every checkpoint of this package records), or None for a checkpoint without the
    record, for which the method check is skipped rather than guessed."""
    recorded = checkpoint.get(METHOD_KEY)
    return recorded if isinstance(recorded, str) else None


def checkpoint_has_reco(checkpoint: Mapping[str, Any]) -> bool:
    """Whether ``checkpoint``'s weights hold a relation bank (every ReCo-on module has one):
    the weights say it even where ``load_from_checkpoint`` overrode the ``reco`` argument."""
    return any(key.startswith("reco.bank.") for key in checkpoint.get("state_dict", {}))


def _describe(method: str | None, reco: bool) -> str:
    """``MoCo with ReCo on (+method=moco +reco=on)``."""
    switch = "on" if reco else "off"
    if method is None:
        return f"a model with ReCo {switch} (+reco={switch})"
    label = METHODS[method].__name__ if method in METHODS else method
    return f"{label} with ReCo {switch} (+method={method} +reco={switch})"


@dataclass
class MethodOutput:
    """What a method's step returns, so ReCo can reuse it instead of recomputing.

    Attributes:
        loss: the method's own loss.
        q1: online embedding of the first strong view (normalised, with gradient).
        k2: target embedding of the second strong view (normalised, detached).
        features: backbone features of the first strong view (for the online probe).
        negatives: MoCo's queue as lent to ReCo's local term: its written rows before this
            step's keys went in; ``None`` for methods without a queue.
    """

    loss: Tensor
    q1: Tensor
    k2: Tensor
    features: Tensor
    negatives: Tensor | None = None


class SSLMethod(ReCoMixin, L.LightningModule):
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
        term_grad_steps: steps per epoch (spread over it) on which the backbone's gradient
            norm from each loss term alone is measured and logged (``train/grad_norm_*``,
            ``train/grad_share_*``): how much of the update each term drives, whatever
            its value. Each costs one extra backward pass per term; 0 = off; skipped
            under DDP.
        reco: ReCo's settings (see :class:`~reco_lightning.reco.ReCoConfig`); ``None`` = off.
    """

    #: dimension of online/target embeddings; set by subclasses before :meth:`make_reco`.
    embedding_dim: int
    #: ReCo's module, or None when ReCo is off (see :meth:`make_reco`)
    reco: ReCo | None
    #: the method's temperature, used by ReCo's local term unless ``reco.tau_local`` is set.
    temperature: float = 0.2
    #: base momentum of the method's EMA targets (see :meth:`momentum_pairs`)
    base_momentum: float = 0.99
    #: ``constant`` or ``cosine`` (momentum raised to 1 over training); ReCo's own teacher
    #: follows it too
    momentum_schedule: str = "constant"
    #: how ReCo's local term mixes the two strong views under ``reco.mix=auto``
    reco_mix: str = "cutmix"
    #: how ReCo's terms weigh against the method loss under ``reco.scale=auto``: ``absolute``
    #: suits a method loss of order 1-10, ``relative`` one far from it (see ReCoConfig)
    reco_scale: str = "absolute"

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
        reco: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if num_classes < 2:
            raise ConfigError(
                f"num_classes={num_classes}: the validation data needs at least two classes"
            )
        positive("knn.k", knn_k), positive("knn.temperature", knn_temperature)
        if (
            isinstance(term_grad_steps, bool)
            or not isinstance(term_grad_steps, int)
            or term_grad_steps < 0
        ):
            raise ConfigError(
                f"diagnostics.term_grad_steps={term_grad_steps!r} must be a whole number >= 0 "
                "(steps per epoch that measure each term's gradient; 0 = off)"
            )
        self.backbone, self.feature_dim = build_backbone(
            backbone, backbone_width, small_stem, zero_init_residual
        )
        if channels_last:  # before methods copy the backbone into their target networks
            self.backbone.to(memory_format=torch.channels_last)
        self.classifier = nn.Linear(self.feature_dim, num_classes)
        self.num_classes = num_classes
        self.train_linear_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_linear_acc = MulticlassAccuracy(num_classes, average="micro")
        self.knn_monitor = KNNMonitor(num_classes, knn_k, knn_temperature)
        self.momentum_gate = OncePerOptimizerStep()
        self.reco = None

    def make_reco(self, embedding_dim: int, **options: Any) -> ReCo | None:
        """ReCo's module from the ``reco`` hyperparameter, or None when ReCo is off. Call it
        last in ``__init__``, when the networks that ReCo's EMA teacher may copy exist.
        ``options`` go to :class:`~reco_lightning.reco.ReCo`; the method's temperature,
        momentum schedule, mixing and trained children (all but the probe) are the defaults."""
        options.setdefault(
            "teacher_modules", trainable_children(self, lambda name: name == "classifier")
        )
        options.setdefault("temperature", self.temperature)
        options.setdefault("momentum_schedule", self.momentum_schedule)
        options.setdefault("mix", self.reco_mix)
        options.setdefault("scale", self.reco_scale)
        return ReCo.from_settings(self.hparams.get("reco"), embedding_dim, self, **options)

    @property
    def reco_enabled(self) -> bool:
        return self.reco is not None

    # -- what a method implements ------------------------------------------------------
    def method_step(self, view1: Tensor, view2: Tensor) -> MethodOutput:
        """The method's own loss from two strong views of the same images."""
        raise NotImplementedError

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """The method's (online, EMA target) module pairs, which :meth:`on_train_batch_end`
        updates once per optimizer step; none by default (SimCLR)."""
        return []

    def current_momentum(self) -> float:
        """The targets' momentum at this step, on the method's schedule."""
        return scheduled_momentum(
            self.base_momentum, self.momentum_schedule, self.global_step, self.total_steps
        )

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """The EMA update of every momentum pair, once per optimizer step (with
        ``accumulate_grad_batches=N``, after every N-th micro-batch). ReCo's own teacher
        moves inside ReCo's call."""
        pairs = self.momentum_pairs()
        if pairs and self.momentum_gate.due(
            self.global_step if self._trainer is not None else None
        ):
            momentum = self.current_momentum()
            for online, target in pairs:
                ema_update(target, online, momentum)
            self.log("train/momentum", momentum, on_step=False, on_epoch=True)

    def forward(self, images: Tensor) -> Tensor:
        """Backbone features, what downstream tasks use."""
        return self.backbone(images)

    def setup(self, stage: str) -> None:
        if self.hparams.get("compile_backbone"):
            self.compile_backbones()

    def compile_backbones(self) -> None:
        """``torch.compile`` the backbone and any target backbone, in place (checkpoints of
        compiled and eager runs load into each other). At ``setup``, after the target
        networks were copied: a deep copy of a compiled module calls the original's forward."""
        for name in ("backbone", "target_backbone"):
            module = getattr(self, name, None)
            if (
                isinstance(module, nn.Module)
                and getattr(module, "_compiled_call_impl", None) is None
            ):
                module.compile()

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
        self.log(
            "train/loss_method", output.loss.detach(), on_step=True, on_epoch=True, prog_bar=True
        )
        terms = {"train/loss_method": output.loss}
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
        self._check_finite(loss, terms, batch_idx)
        if self._term_grads_due(batch_idx):
            weighted = {"method": output.loss}
            if self.reco is not None:
                weighted["global"] = None if reco.global_ is None else reco.w_global * reco.global_
                weighted["local"] = None if reco.local is None else reco.w_local * reco.local
            self._log_term_grads(weighted)

        logits = self.classifier(output.features.detach())
        probe_loss = F.cross_entropy(logits, batch["label"])
        self.train_linear_acc(logits.detach(), batch["label"])
        self.log("train/linear_loss", probe_loss.detach(), on_step=False, on_epoch=True)
        self.log("train/linear_acc", self.train_linear_acc, on_step=False, on_epoch=True)
        return loss + probe_loss

    def _term_grads_due(self, batch_idx: int) -> bool:
        """Whether this step is one of the ``term_grad_steps`` spread evenly over the epoch."""
        steps = int(self.hparams.get("term_grad_steps") or 0)
        if steps == 0 or self._trainer is None or self.trainer.world_size > 1:
            return False
        batches = self.trainer.num_training_batches
        interval = max(int(batches) // steps, 1) if math.isfinite(batches) else 1
        return batch_idx % interval == 0 and batch_idx // interval < steps

    def _log_term_grads(self, weighted: dict[str, Tensor | None]) -> None:
        """Log the norm of the backbone's gradient from each weighted term alone, and its
        share of their sum; a term skipped this step (weight 0, bank still filling) has 0."""
        parameters = [p for p in self.backbone.parameters() if p.requires_grad]
        norms: dict[str, Tensor] = {}
        for name, term in weighted.items():
            norms[name] = torch.zeros((), device=self.device)
            if term is not None and term.requires_grad:
                grads = torch.autograd.grad(term, parameters, retain_graph=True, allow_unused=True)
                norms[name] = torch.sqrt(
                    sum(
                        (g.float().pow(2).sum() for g in grads if g is not None),
                        torch.zeros((), device=self.device),
                    )
                )
        total = sum(norms.values()).clamp_min(1e-12)
        for name, norm in norms.items():
            self.log(f"train/grad_norm_{name}", norm, on_step=False, on_epoch=True)
            self.log(f"train/grad_share_{name}", norm / total, on_step=False, on_epoch=True)

    def _check_finite(self, loss: Tensor, terms: dict[str, Tensor | None], batch_idx: int) -> None:
        """Stop at the first NaN or infinite loss, naming the step and the term.

        Training on would only overwrite the last good checkpoint with a broken one. Under
        DDP the ranks agree first, so they stop together instead of hanging.
        """
        finite = torch.isfinite(loss.detach()).to(torch.float32)
        if self._trainer is not None and self.trainer.world_size > 1:
            finite = self.trainer.strategy.reduce(finite, reduce_op="min")
        if bool(finite):
            return
        bad = [
            f"{name} = {float(value.detach()):g}"
            for name, value in terms.items()
            if value is not None and not torch.isfinite(value.detach())
        ]
        where = ", ".join(bad) or "a term on another rank"
        fixes = "lower optimizer.lr, raise optimizer.warmup_epochs or try trainer.precision=32-true"
        last = self._last_checkpoint()
        if last is None:
            kept = f"no checkpoint had been written yet, so start the run again: {fixes}"
        else:
            kept = (
                f"{last} (written before this step) is kept: {fixes}, "
                f"then continue with resume={last}"
            )
        raise NonFiniteLossError(
            f"the loss became non-finite at global step {self.global_step} (epoch "
            f"{self.current_epoch}, "
            f"batch {batch_idx}): {where}. Training stopped; {kept}"
        )

    def _last_checkpoint(self) -> str | None:
        """The run's ``last.ckpt`` if one has been written (for messages that point to it)."""
        callback = self.trainer.checkpoint_callback if self._trainer is not None else None
        dirpath = getattr(callback, "dirpath", None)
        if dirpath is None:
            return None
        last = os.path.join(dirpath, "last.ckpt")
        return last if os.path.isfile(last) else None

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups of everything but the online probe: weights, and
        biases/norm parameters (no decay, no LARS). BYOL overrides it for its predictor."""
        trained = nn.ModuleDict(
            {name: m for name, m in self.named_children() if name != "classifier"}
        )
        return split_decay_groups(trained)

    def configure_optimizers(self) -> dict[str, Any]:
        groups = self.parameter_groups()
        groups.append(
            {
                "params": list(self.classifier.parameters()),
                "lr": self.hparams.classifier_lr,
                "weight_decay": 0.0,
                "lars_exclude": True,
            }
        )
        optimizer = build_optimizer(
            self.hparams.optimizer,
            groups,
            self.hparams.lr,
            self.hparams.weight_decay,
            self.hparams.sgd_momentum,
            kernel=self.hparams.get("optimizer_kernel", "auto"),
        )
        total_steps = max(int(self.trainer.estimated_stepping_batches), 1)
        epochs = max(int(self.trainer.max_epochs or 1), 1)
        warmup_steps = int(self.hparams.warmup_epochs * total_steps / epochs)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, warmup_steps, total_steps)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole run (for momentum schedules); 0 without a Trainer,
        which leaves the momentum at its base value."""
        return 0 if self._trainer is None else max(int(self.trainer.estimated_stepping_batches), 1)

    # -- validation: online probe and kNN monitor -----------------------------------------
    def validation_step(
        self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        images, labels = batch
        images = self._memory_format(images)
        features = self.backbone(images).float()
        self.knn_monitor.update(features, labels, bank=dataloader_idx == 0)
        if dataloader_idx == 0:
            return
        self.val_linear_acc(self.classifier(features), labels)
        self.log("val/linear_acc", self.val_linear_acc, on_epoch=True, add_dataloader_idx=False)

    def on_validation_epoch_end(self) -> None:
        monitor = self.knn_monitor
        if not monitor.has_data():  # e.g. a sanity check that saw no batches
            monitor.reset()
            return
        result = monitor.compute()  # gathered from every rank
        monitor.reset()
        self.log("val/knn_acc", result.accuracy.item(), prog_bar=True)
        for name, value in self._relation_diagnostics(
            result.query_features, result.query_labels
        ).items():
            self.log(f"val/{name.replace('@', '_at_')}", value)

    def _relation_diagnostics(self, features: Tensor, labels: Tensor) -> dict[str, float]:
        """The relation diagnostics of at most ``DIAGNOSTIC_SAMPLES`` validation features, and
        the alignment of two strong views of ``ALIGNMENT_IMAGES`` fixed validation images."""
        features, labels = features[:DIAGNOSTIC_SAMPLES], labels[:DIAGNOSTIC_SAMPLES]
        if labels.shape[0] < 2:
            return {}
        view1 = view2 = None
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "alignment_loader"):
            loader = datamodule.alignment_loader(ALIGNMENT_IMAGES)
            view1, view2 = view_pair_features(self.backbone, loader, self.device)
        return relation_diagnostics(features, labels, view1, view2)

    # -- checkpoints: which method wrote them, random state ----------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the method (so a load into another can be refused with a message) and the
        RNG states (so a resumed run draws the same ReCo mixing as the original)."""
        checkpoint[METHOD_KEY] = method_name(type(self))
        checkpoint["rng_states"] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another method or ReCo setting, then restore the RNG states.
        Lightning calls it before loading the weights (in :meth:`load_from_checkpoint` and on
        a resume), so the user reads what the checkpoint holds, not a list of missing keys."""
        self.check_checkpoint_fits(checkpoint)
        if "rng_states" in checkpoint:
            set_rng_states(checkpoint["rng_states"])

    def check_checkpoint_fits(self, checkpoint: Mapping[str, Any]) -> None:
        """ConfigError naming both sides when ``checkpoint`` was written by another method
        or with the other ReCo setting than this module's."""
        theirs, their_reco = checkpoint_method(checkpoint), checkpoint_has_reco(checkpoint)
        ours = method_name(type(self))
        if (theirs is None or theirs == ours) and their_reco == self.reco_enabled:
            return
        raise ConfigError(_mismatch_message(theirs, their_reco, _describe(ours, self.reco_enabled)))

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> SSLMethod:  # type: ignore[override]
        """Lightning's ``load_from_checkpoint``, with one-line errors that name the file, also
        for the mismatch that fails while the module is built: another method's
        hyperparameters (a MoCo checkpoint's ``queue_size`` given to SimCLR)."""
        where = f"{checkpoint_path}: " if isinstance(checkpoint_path, (str, Path)) else ""
        try:
            kwargs.setdefault("weights_only", True)  # tensors and plain values: runs no code
            return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)
        except ConfigError as error:
            raise ConfigError(f"{where}{error}") from None
        except TypeError:
            if not where:
                raise
            from ..checkpoints import read_checkpoint

            checkpoint = read_checkpoint(checkpoint_path)
            theirs = checkpoint_method(checkpoint)
            if theirs is None or theirs == method_name(cls):
                raise
            message = _mismatch_message(theirs, checkpoint_has_reco(checkpoint), cls.__name__)
            raise ConfigError(f"{where}{message}") from None


def _mismatch_message(method: str | None, reco: bool, loaded_into: str) -> str:
    """One line: what the checkpoint holds, what it was loaded into, and the two fixes."""
    switch = "on" if reco else "off"
    fix = f"resume it with the run's +reco={switch}"
    if method is not None:
        fix = f"resume it with the run's +method={method} +reco={switch}"
        if method in METHODS:
            fix += f", or load it with {METHODS[method].__name__}.load_from_checkpoint(path)"
    holds = _describe(method, reco)
    return f"the checkpoint holds {holds}, but it is being loaded into {loaded_into}: {fix}"
