"""What a built-in method writes into its checkpoints and checks when one is loaded.

:class:`CheckpointIdentity` records the ``+method=`` name and the RNG states in every
checkpoint, and refuses, with one line naming both sides, a checkpoint of another method or
ReCo setting before any weight is copied (the reading itself is
:mod:`reco_lightning.run.checkpoints`'s).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch

from ..errors import ConfigError
from ..run.checkpoints import (
    METHOD_KEY,
    checkpoint_has_reco,
    checkpoint_method,
    describe,
    mismatch_message,
)
from ..utils.rng import rng_states, set_rng_states
from .registry import class_names, registered_name


class CheckpointIdentity(L.LightningModule):
    """Checkpoint hooks of :class:`~reco_lightning.methods.SSLMethod`; ``reco_enabled`` is
    whether this module has ReCo on."""

    reco_enabled: bool

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the method (so a load into another can be refused with a message) and the
        RNG states (so a resumed run draws the same ReCo mixing as the original)."""
        checkpoint[METHOD_KEY] = registered_name(type(self))
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
        ours = registered_name(type(self))
        if (theirs is None or theirs == ours) and their_reco == self.reco_enabled:
            return
        labels = class_names()
        into = describe(ours, self.reco_enabled, labels.get(ours))
        raise ConfigError(mismatch_message(theirs, their_reco, into, labels))

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
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
            # Lightning read the file (weights only) before the module's arguments failed
            checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
            theirs = checkpoint_method(checkpoint)
            if theirs is None or theirs == registered_name(cls):
                raise
            has_reco = checkpoint_has_reco(checkpoint)
            message = mismatch_message(theirs, has_reco, cls.__name__, class_names())
            raise ConfigError(f"{where}{message}") from None


__all__ = ["CheckpointIdentity"]
