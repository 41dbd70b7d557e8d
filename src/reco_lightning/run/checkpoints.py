"""Checkpoint files: reading them safely, with an error a user can act on, and what they hold.

An interrupted copy or a full disk leaves a truncated ``.ckpt``; ``torch.load`` then fails
deep inside its zip or pickle reader with a message that does not name the file.
:func:`read_checkpoint` (used by ``python -m reco_lightning.eval`` and by resume) names
the file instead and suggests another checkpoint of the same run.

Checkpoints are read with ``torch.load(weights_only=True)``: tensors, containers and plain
values only, which is all a training checkpoint of this package holds. A file whose pickle
asks for anything else (a ``__reduce__`` that would run code when it is opened) is refused
with one line before any of it runs, so a checkpoint from someone else cannot run code
through ``eval``, ``export`` or ``resume=``.

A checkpoint's identity (which method wrote it, whether ReCo was on) is read off its contents
(:func:`checkpoint_method`, :func:`checkpoint_has_reco`), so a load into another method or
ReCo setting is refused with :func:`mismatch_message` before any weight is copied.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO

from ..errors import ConfigError, StorageError

#: the keys every Lightning training checkpoint of a module with saved hyperparameters has
REQUIRED_KEYS = ("state_dict", "hyper_parameters")


def checkpoint_file(value: object, setting: str, alternatives: str) -> Path:
    """The checkpoint file ``setting=value`` names: a ``.ckpt`` file, or a run directory's
    ``checkpoints/last.ckpt``; a ConfigError when there is none (``alternatives`` says what
    else the setting takes)."""
    path = Path(str(value)).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise ConfigError(
            f"{setting}={value}: no checkpoint at {path}; pass a .ckpt file{alternatives}"
        )
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The contents of the training checkpoint at ``path``, on the CPU, read safely.

    Raises:
        ConfigError: (one line naming the file) it holds objects other than tensors and
            plain values, it cannot be unpickled, or it is not a Lightning checkpoint with
            ``state_dict`` and ``hyper_parameters``.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # a pickle that asks for a global (a class or function to call): refused; anything
        # else the unpickler trips on is a file that is no checkpoint at all
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        if found is None:
            raise ConfigError(_unreadable(path, error)) from None
        raise ConfigError(
            f"checkpoint {path} refused: it holds Python objects ({found.group(1)}) that no "
            "training checkpoint of this package holds, and opening them could run code; use a "
            f"checkpoint that training wrote, from a source you trust{_alternatives(path)}"
        ) from None
    except Exception as error:  # noqa: BLE001 - garbage bytes fail anywhere in the unpickler
        raise ConfigError(_unreadable(path, error)) from None
    missing = [key for key in REQUIRED_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        what = (
            f"a dict without {' and '.join(repr(k) for k in missing)}"
            if isinstance(state, dict)
            else f"a {type(state).__name__}"
        )
        raise ConfigError(
            f"checkpoint {path} holds {what}, not a reco_lightning training checkpoint: pass a "
            ".ckpt that training wrote (RUN/checkpoints/last.ckpt or best-*.ckpt)"
            f"{_alternatives(path)}"
        )
    return state


def _unreadable(path: Path, error: BaseException) -> str:
    """The one line for a truncated or foreign file (torch's first sentence is the gist)."""
    reason = " ".join(str(error).split()).split(". ")[0][:120]
    return (
        f"checkpoint {path} is not a readable checkpoint ({type(error).__name__}: {reason}); "
        "it may have been truncated by an interrupted copy or write: use another "
        f"checkpoint{_alternatives(path)}"
    )


def _alternatives(path: Path) -> str:
    """``, e.g. best-x.ckpt beside it`` naming the other checkpoints in ``path``'s folder."""
    try:
        others = sorted(p.name for p in path.parent.glob("*.ckpt") if p.name != path.name)
    except OSError:
        return ""
    if not others:
        return ", e.g. a best-*.ckpt of the same run"
    best = [name for name in others if name.startswith("best-")] or others
    return f", e.g. {best[-1]} beside it"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint whole or not at all: into a temporary file in the checkpoint's
    own folder, flushed to disk (``fsync``), then renamed over the old one, so a kill or a
    full disk at any moment leaves the previous checkpoint as it was and never a torn file
    under a checkpoint's name (Lightning's writer stages the file in another folder and
    moves it, which across file systems is a copy that a kill can cut short).

    A write that fails (a full disk) removes its temporary file and stops the run with
    :class:`~reco_lightning.errors.StorageError`, one line naming the folder.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> AtomicCheckpointIO().save_checkpoint({"x": torch.ones(1)}, folder / "last.ckpt")
    >>> sorted(p.name for p in folder.iterdir())
    ['last.ckpt']
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        buffer = io.BytesIO()  # serialised first: a full disk then fails as the OSError it is
        torch.save(checkpoint, buffer)
        try:
            with open(temporary, "wb") as handle:
                handle.write(buffer.getbuffer())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
            _fsync_folder(target.parent)
        except OSError as error:
            temporary.unlink(missing_ok=True)
            kept = "the previous checkpoint there is kept" if target.is_file() else "none is kept"
            reason = "the disk is full" if error.errno == errno.ENOSPC else error.strerror
            raise StorageError(
                f"could not write checkpoint {target.name} in {target.parent} ({reason}); "
                f"{kept}: free space there (or choose another hydra.run.dir), then resume=auto"
            ) from None


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def last_checkpoint(trainer: Any) -> str | None:
    """The ``last.ckpt`` that ``trainer``'s checkpoint callback has written, if any (for
    messages that point to it): the run's (a callback with ``last_path``) or a Lightning
    ``ModelCheckpoint``'s; None without a Trainer."""
    callbacks = [*getattr(trainer, "callbacks", []), getattr(trainer, "checkpoint_callback", None)]
    for callback in callbacks:
        last = getattr(callback, "last_path", None)
        if last is None and getattr(callback, "dirpath", None) is not None:
            last = Path(callback.dirpath) / "last.ckpt"
        if last is not None and Path(last).is_file():
            return str(last)
    return None


#: the checkpoint entry that records the ``+method=`` name of the method that wrote it
METHOD_KEY = "reco_lightning_method"


def checkpoint_method(checkpoint: Mapping[str, Any]) -> str | None:
    """The ``+method=`` name of the method that wrote ``checkpoint`` (:data:`METHOD_KEY`,
    which every checkpoint of this package records), or None for a checkpoint without the
    record, for which the method check is skipped rather than guessed.

    >>> checkpoint_method({METHOD_KEY: "moco"}), checkpoint_method({})
    ('moco', None)
    """
    recorded = checkpoint.get(METHOD_KEY)
    return recorded if isinstance(recorded, str) else None


def checkpoint_has_reco(checkpoint: Mapping[str, Any]) -> bool:
    """Whether ``checkpoint``'s weights hold a relation bank (every ReCo-on module has one):
    the weights say it even where ``load_from_checkpoint`` overrode the ``reco`` argument.

    >>> checkpoint_has_reco({"state_dict": {"reco.bank.features": None}})
    True
    """
    return any(key.startswith("reco.bank.") for key in checkpoint.get("state_dict", {}))


def describe(method: str | None, reco: bool, label: str | None = None) -> str:
    """``MoCo with ReCo on (+method=moco +reco=on)``; ``label`` is the method's class name.

    >>> describe("moco", True, "MoCo")
    'MoCo with ReCo on (+method=moco +reco=on)'
    """
    switch = "on" if reco else "off"
    if method is None:
        return f"a model with ReCo {switch} (+reco={switch})"
    return f"{label or method} with ReCo {switch} (+method={method} +reco={switch})"


def mismatch_message(
    method: str | None, reco: bool, loaded_into: str, labels: Mapping[str, str]
) -> str:
    """One line: what a checkpoint of ``method`` (ReCo ``reco``) holds, what it was loaded
    into, and the two fixes; ``labels`` maps ``+method=`` names to class names.

    >>> print(mismatch_message("moco", True, "SimCLR", {"moco": "MoCo"}))  # doctest: +ELLIPSIS
    the checkpoint holds MoCo with ReCo on (+method=moco +reco=on), but it is being loaded ...
    """
    switch = "on" if reco else "off"
    fix = f"resume it with the run's +reco={switch}"
    if method is not None:
        fix = f"resume it with the run's +method={method} +reco={switch}"
        if method in labels:
            fix += f", or load it with {labels[method]}.load_from_checkpoint(path)"
    holds = describe(method, reco, labels.get(method or ""))
    return f"the checkpoint holds {holds}, but it is being loaded into {loaded_into}: {fix}"


__all__ = [
    "AtomicCheckpointIO",
    "METHOD_KEY",
    "checkpoint_file",
    "checkpoint_has_reco",
    "checkpoint_method",
    "describe",
    "last_checkpoint",
    "mismatch_message",
    "read_checkpoint",
]
