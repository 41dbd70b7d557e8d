"""``ReCo``: one module that owns everything ReCo keeps and computes both relation terms.

A model holds a ``ReCo`` and calls it once per training step, as it would a loss module.
The call moves ReCo's own EMA teacher (once per optimizer step), scores the batch against
*clones* of the relation bank and the negatives, and then enqueues this step's teacher
keys, gathered from every rank. Cloning first means the enqueue cannot overwrite what
autograd saved and a batch never meets its own keys; doing it all in the call means no
hook, base-class order or ``super()`` call. ReCo logs nothing: it returns
:class:`ReCoTerms` for the caller to log.

Queue rows never written are left out of both terms; a term whose queue holds fewer
written rows than one global batch is skipped for the step, not scored as zero.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..losses.relation import global_relation_loss, interpolation_target, local_interpolation_loss
from ..models.modules import embedding_children, trainable_children
from ..models.queue import FeatureQueue
from ..utils.distributed import gather_without_grad, rank
from ..utils.momentum import scheduled_momentum
from .config import NEGATIVES, SCALES, TEACHERS, ReCoConfig
from .mixing import MIX_MODES, mix_views
from .teacher import EMATeacher


class Embedder(Protocol):
    """What ReCo needs from the model it plugs into.

    ``online_embedding(images)``: the online network's L2-normalised embedding, with
    gradient. A model with a momentum target network also has ``target_embedding(images)``
    (normalised, no gradient), which ``reco.teacher=auto`` then distils from.
    """

    def online_embedding(self, images: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class TrainingProgress:
    """Where training stands, for the warm-up and the teacher's momentum schedule.
    ``step=None`` means no Trainer: full weights, and every call is a new optimizer step."""

    step: int | None = None
    total_steps: int = 0
    steps_per_epoch: int = 0
    world_size: int = 1


@dataclass
class ReCoTerms:
    """What one ReCo call computed: the unweighted terms (``None`` when skipped), their
    weighted sum to add to the loss, the weights in effect (after the warm-up and, with
    ``reco.scale=relative``, times the method loss over the term), and the mixing ``lam``."""

    global_: Tensor | None
    local: Tensor | None
    weighted: Tensor
    w_global: float | Tensor = 0.0
    w_local: float | Tensor = 0.0
    lam: float | None = None

    @property
    def global_skipped(self) -> bool:
        """The term was due (weight > 0) but its bank held too few written rows."""
        return self.global_ is None and self.w_global > 0

    @property
    def local_skipped(self) -> bool:
        return self.local is None and self.w_local > 0

    def weighted_terms(self) -> dict[str, Tensor | None]:
        """Each term times its weight in effect (``None`` when skipped): what it adds."""
        return {
            "global": None if self.global_ is None else self.w_global * self.global_,
            "local": None if self.local is None else self.w_local * self.local,
        }


def _owners_choice(
    name: str, configured: str, owners: str, choices: Sequence[str], what: str
) -> str:
    """``reco.<name>``, or the owner's choice ``owners`` where it is ``auto``; an owner's
    choice outside ``choices`` is named (the config's own values are checked already)."""
    chosen = configured if configured != "auto" else owners
    if chosen not in choices:
        raise ConfigError(
            f"ReCo({name}={owners!r}): the owner's {what} must be one of {list(choices)}"
        )
    return chosen


class ReCo(nn.Module):
    """ReCo's relation bank, negatives, teacher, mixing and both terms, in one module.

    >>> import torch, torch.nn.functional as F
    >>> from torch import nn
    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.encoder = nn.Linear(12, 8)
    ...         sizes = {"bank_size": 16, "negatives_size": 16}
    ...         self.reco = ReCo(sizes, embedding_dim=8, owner=self)
    ...     def online_embedding(self, x):
    ...         return F.normalize(self.encoder(x.flatten(1)), dim=1)
    >>> net = Net()
    >>> views = [torch.randn(4, 3, 2, 2) for _ in range(3)]
    >>> terms = net.reco(net, *views)        # the banks are still empty: both terms skipped
    >>> terms.global_skipped, int(net.reco.bank.num_enqueued)
    (True, 4)

    Args:
        config: the settings (:class:`ReCoConfig`, a mapping, or a Hydra config).
        embedding_dim: dimension of the online and teacher embeddings.
        owner: the model ReCo plugs into, read once here and never stored: whether it has a
            ``target_embedding`` (``teacher=auto``), and the children that its EMA teacher
            copies.
        temperature: the local term's temperature unless ``config.tau_local`` is set; pass
            the method's own.
        teacher_modules: the children of ``owner`` that ``online_embedding`` runs through,
            which ReCo's own EMA teacher copies (default: every child with trainable
            parameters).
        borrows_negatives: the owner keeps a queue of teacher keys of its own (MoCo) and
            lends a snapshot of it to each call (``negatives=``), so ReCo keeps none.
        momentum_schedule: ``constant`` or ``cosine``, the owner's; ReCo's teacher follows it.
        mix: the owner's choice of mixing (``cutmix`` or ``mixup``) for ``reco.mix=auto``.
        scale: the owner's choice of weighting (``absolute`` or ``relative``) for
            ``reco.scale=auto``: ``relative`` for a method loss far from order 1-10.
        negatives: the owner's choice of the local term's negatives (``queue`` or
            ``batch``) for ``reco.negatives=auto``.
        warmup_epochs: the owner's warm-up of both weights, in epochs, for
            ``reco.warmup_epochs=null``.
        weights: the owner's ``(w_global, w_local)`` for ``reco.w_global`` and
            ``reco.w_local`` left null.
        teacher: the owner's choice of teacher (``auto``, ``ema`` or ``online``) for
            ``reco.teacher=auto``; ``auto`` is the momentum target if the owner has one,
            else ReCo's EMA copy.
    """

    def __init__(
        self,
        config: ReCoConfig | Mapping[str, Any],
        embedding_dim: int,
        owner: nn.Module,
        temperature: float = 0.2,
        teacher_modules: Sequence[str] | None = None,
        borrows_negatives: bool = False,
        momentum_schedule: str = "constant",
        mix: str = "cutmix",
        scale: str = "absolute",
        negatives: str = "queue",
        warmup_epochs: float = 2.0,
        weights: tuple[float, float] = (1.0, 1.0),
        teacher: str = "auto",
    ) -> None:
        super().__init__()
        checked = ReCoConfig.from_mapping(config)
        if checked is None:
            raise ConfigError(
                "ReCo was built with reco.enabled=false: build no ReCo module to turn it off"
            )
        self.config = checked
        self.tau_local = checked.tau_local if checked.tau_local is not None else temperature
        self.mix = _owners_choice("mix", checked.mix, mix, MIX_MODES, "mixing")
        self.scale = _owners_choice("scale", checked.scale, scale, SCALES, "weighting")
        self.negatives_kind = _owners_choice(
            "negatives", checked.negatives, negatives, NEGATIVES, "negatives"
        )
        self.warmup_epochs = (
            checked.warmup_epochs if checked.warmup_epochs is not None else warmup_epochs
        )
        if self.warmup_epochs < 0:
            raise ConfigError(
                f"ReCo(warmup_epochs={warmup_epochs!r}): the owner's warm-up must be >= 0"
            )
        if len(weights) != 2 or any(not w >= 0 for w in weights):
            raise ConfigError(
                f"ReCo(weights={weights!r}): the owner's weights must be two numbers >= 0, "
                "(w_global, w_local)"
            )
        #: the weights in effect after the warm-up: ``reco.w_*``, or the owner's where null
        self.w_global = checked.w_global if checked.w_global is not None else float(weights[0])
        self.w_local = checked.w_local if checked.w_local is not None else float(weights[1])
        self.momentum_schedule = momentum_schedule
        self.bank = FeatureQueue(checked.bank_size, embedding_dim, name="reco.bank_size")
        self.borrows_negatives = borrows_negatives and self.negatives_kind == "queue"
        self.negatives: FeatureQueue | None = None
        if self.negatives_kind == "queue" and not borrows_negatives:
            self.negatives = FeatureQueue(
                checked.negatives_size, embedding_dim, name="reco.negatives_size"
            )
        chosen_teacher = _owners_choice("teacher", checked.teacher, teacher, TEACHERS, "teacher")
        self.teacher_kind = self._resolve_teacher(chosen_teacher, owner)
        self.teacher: EMATeacher | None = None
        if self.teacher_kind == "ema":
            names = list(teacher_modules) if teacher_modules else self._embedding_modules(owner)
            self.teacher = EMATeacher(owner, names)

    @classmethod
    def from_settings(
        cls,
        settings: ReCoConfig | Mapping[str, Any] | None,
        embedding_dim: int,
        owner: nn.Module,
        **options: Any,
    ) -> ReCo | None:
        """A ReCo, or None when ``settings`` turn ReCo off (``None``, or ``enabled: false``
        as ``+reco=off`` gives): ``self.reco = ReCo.from_settings(reco, 128, self)``."""
        config = ReCoConfig.from_mapping(settings)
        return None if config is None else cls(config, embedding_dim, owner, **options)

    @staticmethod
    def _embedding_modules(owner: nn.Module) -> list[str]:
        """The children the owner's ``online_embedding`` runs through, traced on one example
        batch (the owner's ``example_input_array``, else 3x32x32 images): not a probe, not a
        target network. An owner whose embedding cannot run on that example (other inputs)
        gets every trainable child copied; setting ``example_input_array`` makes it exact."""
        children = trainable_children(owner)
        if not children:
            raise ConfigError(
                f"ReCo's EMA teacher found nothing to copy in {type(owner).__name__}: build "
                "self.reco last in __init__, after the networks that online_embedding runs "
                "through, or pass ReCo(..., teacher_modules=[their names])"
            )
        try:
            return embedding_children(owner) or children
        except Exception:  # noqa: BLE001 - the example does not fit the owner's inputs
            return children

    @staticmethod
    def _resolve_teacher(choice: str, owner: nn.Module) -> str:
        """``target`` (the owner's momentum network), ``ema`` (ReCo's copy) or ``online``."""
        has_target = callable(getattr(owner, "target_embedding", None))
        if choice == "auto":
            return "target" if has_target else "ema"
        return choice

    # -- schedules ---------------------------------------------------------------------------
    def weights(self, progress: TrainingProgress) -> tuple[float, float]:
        """``(w_global, w_local)``, raised linearly from 0 over the warm-up."""
        warmup_steps = self.warmup_epochs * progress.steps_per_epoch
        if progress.step is None or warmup_steps <= 0:
            return self.w_global, self.w_local
        scale = min(progress.step / warmup_steps, 1.0)
        return self.w_global * scale, self.w_local * scale

    def teacher_momentum(self, progress: TrainingProgress) -> float:
        """The momentum of ReCo's own teacher at ``progress``, on the owner's schedule."""
        return scheduled_momentum(
            self.config.teacher_momentum,
            self.momentum_schedule,
            progress.step or 0,
            progress.total_steps,
        )

    def teacher_embedding(self, owner: Embedder, images: Tensor) -> Tensor:
        """The teacher's normalised embedding of ``images``, without gradient."""
        with torch.no_grad():
            if self.teacher_kind == "target":
                keys = owner.target_embedding(images)  # type: ignore[attr-defined]
            elif self.teacher is not None:
                keys = self.teacher.embed(owner, images)  # type: ignore[arg-type]
            else:
                keys = owner.online_embedding(images)
            return F.normalize(keys.detach(), dim=1)

    # -- the call ----------------------------------------------------------------------------
    def forward(
        self,
        owner: Embedder,
        strong1: Tensor,
        strong2: Tensor,
        weak: Tensor,
        q1: Tensor | None = None,
        k2: Tensor | None = None,
        negatives: Tensor | None = None,
        progress: TrainingProgress | None = None,
        method_loss: Tensor | None = None,
    ) -> ReCoTerms:
        """Both terms for one batch, weighted; then this step's keys into the banks.

        Args:
            owner: the model (its ``online_embedding``, and ``target_embedding`` if any).
            strong1, strong2, weak: the two strong views and the weak view of the batch.
            q1: ``online_embedding(strong1)`` if the method already computed it.
            k2: the method's ``target_embedding(strong2)``, used when the teacher is the
                owner's target network; ReCo's own teacher always computes its own.
            negatives: the lent negatives (written rows only, taken before the owner
                enqueued this step's keys) when built with ``borrows_negatives``.
            progress: where training stands (warm-up, teacher momentum, world size).
            method_loss: the method's own loss, which ``reco.scale=relative`` weighs each
                term against (only its value is used: no gradient flows through it).
        """
        progress = progress or TrainingProgress()
        config = self.config
        if self.scale == "relative" and method_loss is None:
            raise ConfigError(
                "reco.scale=relative weighs the terms against the method's loss: pass "
                "method_loss= to the ReCo call (reco_loss(batch, method_loss=loss)), or use "
                "reco.scale=absolute"
            )
        if self.teacher is not None:
            self.teacher.update(owner, self.teacher_momentum(progress), progress.step)  # type: ignore[arg-type]
        w_global, w_local = self.weights(progress)
        # Normalising again is a no-op for the normalised embeddings the contract asks for,
        # and keeps the temperatures meaningful if a user passes raw projector outputs.
        q1 = F.normalize(owner.online_embedding(strong1) if q1 is None else q1, dim=1)
        if k2 is None or self.teacher_kind != "target":
            k2 = self.teacher_embedding(owner, strong2)
        k2 = F.normalize(k2.detach(), dim=1)
        weak_keys = self.teacher_embedding(owner, weak)
        global_batch = weak_keys.shape[0] * progress.world_size

        weighted = q1.new_zeros((), dtype=torch.float32)
        loss_global = loss_local = None
        bank = self.bank.filled().clone()
        if w_global > 0 and bank.shape[0] >= global_batch:
            loss_global = global_relation_loss(
                q1, weak_keys, bank, config.tau_student, config.tau_teacher
            )
            w_global *= self._relative_scale(method_loss, loss_global)
            weighted = weighted + w_global * loss_global

        scored, exclude = self._local_negatives(k2, negatives, global_batch)
        lam = None
        if w_local > 0 and scored is not None:
            mixed = mix_views(strong1, strong2, self.mix, config.alpha)
            lam = mixed.lam
            target = interpolation_target(q1, k2[mixed.permutation], mixed.lam)
            mixed_embedding = F.normalize(owner.online_embedding(mixed.images), dim=1)
            mask = exclude(mixed.permutation) if exclude is not None else None
            loss_local = local_interpolation_loss(
                mixed_embedding, target, scored, self.tau_local, mask
            )
            w_local *= self._relative_scale(method_loss, loss_local)
            weighted = weighted + w_local * loss_local

        self.bank.enqueue(weak_keys)
        if self.negatives is not None:
            self.negatives.enqueue(k2)
        return ReCoTerms(loss_global, loss_local, weighted, w_global, w_local, lam)

    def _relative_scale(self, method_loss: Tensor | None, term: Tensor) -> float | Tensor:
        """1 under ``reco.scale=absolute``; under ``relative``, the method loss over ``term``,
        detached (the factor carries no gradient), kept on the device (no host sync)."""
        if self.scale == "absolute" or method_loss is None:
            return 1.0
        return method_loss.detach().float() / term.detach().float().clamp_min(1e-12)

    def _local_negatives(
        self, k2: Tensor, lent: Tensor | None, global_batch: int
    ) -> tuple[Tensor | None, Callable[[Tensor], Tensor] | None]:
        """The local term's negatives and, for batch negatives, a function of the mixing
        permutation that gives the columns to leave out; ``(None, None)`` while a queue
        holds fewer written rows than one global batch."""
        if self.negatives_kind == "batch":
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
        if self.borrows_negatives:
            if lent is None:
                raise RuntimeError(
                    "this ReCo borrows its negatives: pass negatives= (the lent queue's written "
                    "rows)"
                )
            queued = lent
        else:
            assert self.negatives is not None
            queued = self.negatives.filled().clone()
        return (queued, None) if queued.shape[0] >= global_batch else (None, None)

    def extra_repr(self) -> str:
        return (
            f"teacher={self.teacher_kind}, negatives={self.negatives_kind}, mix={self.mix}, "
            f"tau_local={self.tau_local}, scale={self.scale}"
        )
