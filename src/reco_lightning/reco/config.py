"""ReCo's settings, with the defaults of RECO.md, checked once at construction."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError, fraction, positive
from .mixing import MIX_MODES

#: where the local term's negatives come from
NEGATIVES = ("queue", "batch")
#: which network is ReCo's teacher (see ReCoConfig)
TEACHERS = ("auto", "ema", "online")


@dataclass(frozen=True)
class ReCoConfig:
    """Weights, temperatures and bank sizes of the two relation terms.

    ``tau_local=None`` means "the method's own temperature" (0.2 for MoCo v2, and 0.2 for
    BYOL, which has none). ``negatives_size`` is used only by methods without a key queue
    of their own (SimCLR, BYOL, most user methods); MoCo lends its queue.

    ``teacher`` picks the network whose embeddings are the targets of both terms:
    ``auto`` takes the method's own momentum target where it has one (MoCo, BYOL, a user
    module that implements ``target_embedding``) and otherwise ReCo's own EMA copy of the
    online network; ``ema`` always takes ReCo's copy (momentum ``teacher_momentum``, on the
    method's momentum schedule); ``online`` scores against the online network itself under
    ``no_grad`` (kept for the ablation: it cost SimCLR 21 kNN points, see RECO.md).

    ``negatives`` picks the local term's negatives: ``queue`` (a FIFO of earlier teacher
    keys; MoCo lends its own) or ``batch`` (the teacher keys of the other images of this
    global batch, as SimCLR's own loss does).

    ``mix`` picks how the local term mixes the two strong views: ``cutmix`` (RECO.md's),
    ``mixup``, or ``auto``, the method's choice (``ReCo(..., mix=)``): Mixup for BYOL and
    MoCo, which gained from it over CutMix on two seeds each (BYOL 3.4 and 3.9 kNN points,
    MoCo 1.1 and 1.3), CutMix for every other method (see docs/benchmarks.md, "Mixup for BYOL
    and MoCo").

    ``warmup_epochs`` raises both weights linearly from 0 to ``w_global`` and ``w_local``
    over that many (possibly fractional) epochs.

    >>> ReCoConfig(w_local=0.5, negatives="batch").teacher
    'auto'
    """

    w_global: float = 1.0
    w_local: float = 1.0
    tau_student: float = 0.1
    tau_teacher: float = 0.04
    tau_local: float | None = None
    alpha: float = 1.0
    mix: str = "auto"
    bank_size: int = 16384
    negatives_size: int = 16384
    negatives: str = "queue"
    teacher: str = "auto"
    teacher_momentum: float = 0.99
    warmup_epochs: float = 2.0

    def __post_init__(self) -> None:
        for name in ("tau_student", "tau_teacher", "alpha"):
            positive(f"reco.{name}", getattr(self, name))
        if self.tau_local is not None and self.tau_local <= 0:
            raise ConfigError(f"reco.tau_local={self.tau_local} must be positive (or null for the method's)")
        for name in ("w_global", "w_local"):
            if getattr(self, name) < 0:
                raise ConfigError(f"reco.{name}={getattr(self, name)} must be >= 0")
        for name in ("bank_size", "negatives_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"reco.{name}={getattr(self, name)} must be a positive number of embeddings")
        if self.negatives not in NEGATIVES:
            raise ConfigError(f"reco.negatives={self.negatives!r} is unknown: choose one of {list(NEGATIVES)}")
        if self.teacher not in TEACHERS:
            raise ConfigError(f"reco.teacher={self.teacher!r} is unknown: choose one of {list(TEACHERS)}")
        fraction("reco.teacher_momentum", self.teacher_momentum)
        if self.warmup_epochs < 0:
            raise ConfigError(f"reco.warmup_epochs={self.warmup_epochs} must be >= 0 (0 = full weights from the start)")
        if self.mix not in ("auto", *MIX_MODES):
            raise ConfigError(f"reco.mix={self.mix!r} is unknown: choose one of {['auto', *MIX_MODES]}")

    @classmethod
    def from_mapping(cls, settings: "ReCoConfig | Mapping[str, Any] | None") -> "ReCoConfig | None":
        """A ReCoConfig from itself, any mapping (a Hydra ``DictConfig`` too) or ``None``;
        ``None`` and ``enabled: false`` mean ReCo is off."""
        if settings is None or isinstance(settings, ReCoConfig):
            return settings
        if isinstance(settings, DictConfig):
            settings = OmegaConf.to_container(settings, resolve=True)  # type: ignore[assignment]
        if not isinstance(settings, Mapping):
            raise TypeError(f"ReCo's settings must be a ReCoConfig, a mapping or None, not {type(settings).__name__}")
        settings = dict(settings)
        if not settings.pop("enabled", True):
            return None
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ConfigError(f"unknown reco setting(s) {unknown}: valid are {sorted(known)}")
        return cls(**settings)
