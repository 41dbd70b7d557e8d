"""ReCo's settings, with the paper's defaults, checked once at construction."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError, fraction, positive
from .mixing import MIX_MODES

#: where the local term's negatives come from
NEGATIVES = ("queue", "batch")  # and "auto": the method's
#: which network is ReCo's teacher (see ReCoConfig)
TEACHERS = ("auto", "ema", "online")
#: what the weights multiply (see ReCoConfig)
SCALES = ("absolute", "relative")  # and "auto": the method's


@dataclass(frozen=True)
class ReCoConfig:
    """Weights, temperatures and bank sizes of the two relation terms.

    * ``w_global``, ``w_local``: each term's weight; ``None`` (the default), the method's
      (``ReCo(..., weights=)``: 1 and 1 for every built-in method unless its validation
      chose otherwise, docs/benchmarks.md).
    * ``tau_local=None``: the method's own temperature (0.2 for BYOL, which has none).
    * ``negatives``: ``queue`` (a FIFO of earlier teacher keys, ``negatives_size`` long;
      MoCo lends its own), ``batch`` (the other teacher keys of this global batch), or
      ``auto`` (the default), the method's choice (``ReCo(..., negatives=)``): ``queue``
      unless a method's validation chose otherwise (docs/benchmarks.md).
    * ``teacher``: whose embeddings are the targets. ``auto`` takes the method's choice
      (``ReCo(..., teacher=)``), which is ``auto`` for every built-in method: its momentum
      target if it has one (``target_embedding``), else ReCo's own EMA copy of the online
      network; ``ema`` always the copy (``teacher_momentum``, on the method's schedule);
      ``online`` the online network under ``no_grad`` (an ablation, see
      docs/benchmarks.md).
    * ``mix``: ``cutmix`` (the paper's), ``mixup``, or ``auto``, the method's choice
      (``ReCo(..., mix=)``: Mixup for MoCo, SimCLR and BYOL, which their validation
      chose; docs/benchmarks.md, "How the defaults were chosen").
    * ``warmup_epochs``: both weights rise linearly from 0 over that many epochs; ``None``
      (the default), the method's (``ReCo(..., warmup_epochs=)``: 0 for MoCo and BYOL, which
      their validation chose, and 2 for the others; docs/benchmarks.md).
    * ``scale``: ``auto`` (the default) takes the method's choice (``ReCo(..., scale=)``):
      ``absolute`` for the built-in InfoNCE and BYOL-like methods and for user modules,
      ``relative`` for Barlow Twins. ``absolute`` adds ``w * term``, which assumes a method
      loss of order 1-10 (each term is a cross-entropy over a bank, up to
      ``log(bank_size)`` nats); ``relative`` adds ``w * (method loss / term) * term`` with
      the ratio taken without gradient, so each term weighs ``w`` times the method's loss
      whatever its size (a redundancy-reduction loss of ~2,000 or a BYOL loss of ~0.3
      alike). The caller passes the method loss to the call (``reco(..., method_loss=)``,
      ``reco_loss(batch, method_loss=)``).

    >>> ReCoConfig(w_local=0.5, negatives="batch").teacher
    'auto'
    """

    w_global: float | None = None
    w_local: float | None = None
    tau_student: float = 0.1
    tau_teacher: float = 0.04
    tau_local: float | None = None
    alpha: float = 1.0
    mix: str = "auto"
    bank_size: int = 16384
    negatives_size: int = 16384
    negatives: str = "auto"
    teacher: str = "auto"
    teacher_momentum: float = 0.99
    warmup_epochs: float | None = None
    scale: str = "auto"

    def __post_init__(self) -> None:
        for name in ("tau_student", "tau_teacher", "alpha"):
            positive(f"reco.{name}", getattr(self, name))
        if self.tau_local is not None and self.tau_local <= 0:
            raise ConfigError(
                f"reco.tau_local={self.tau_local} must be positive (or null for the method's)"
            )
        for name in ("w_global", "w_local"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ConfigError(f"reco.{name}={getattr(self, name)} must be >= 0")
        for name in ("bank_size", "negatives_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(
                    f"reco.{name}={getattr(self, name)} must be a positive number of embeddings"
                )
        for name, choices in (
            ("negatives", ["auto", *NEGATIVES]),
            ("teacher", TEACHERS),
            ("mix", ["auto", *MIX_MODES]),
            ("scale", ["auto", *SCALES]),
        ):
            if getattr(self, name) not in choices:
                raise ConfigError(
                    f"reco.{name}={getattr(self, name)!r} is unknown: choose one of {list(choices)}"
                )
        fraction("reco.teacher_momentum", self.teacher_momentum)
        if self.warmup_epochs is not None and self.warmup_epochs < 0:
            raise ConfigError(
                f"reco.warmup_epochs={self.warmup_epochs} must be >= 0 (0 = full weights from the "
                "start)"
            )

    @classmethod
    def from_mapping(cls, settings: "ReCoConfig | Mapping[str, Any] | None") -> "ReCoConfig | None":
        """A ReCoConfig from itself, any mapping (a Hydra ``DictConfig`` too) or ``None``;
        ``None`` and ``enabled: false`` mean ReCo is off."""
        if settings is None or isinstance(settings, ReCoConfig):
            return settings
        if isinstance(settings, DictConfig):
            settings = OmegaConf.to_container(settings, resolve=True)  # type: ignore[assignment]
        if not isinstance(settings, Mapping):
            raise TypeError(
                "ReCo's settings must be a ReCoConfig, a mapping or None, not "
                f"{type(settings).__name__}"
            )
        settings = dict(settings)
        if not settings.pop("enabled", True):
            return None
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ConfigError(f"unknown reco setting(s) {unknown}: valid are {sorted(known)}")
        return cls(**settings)
