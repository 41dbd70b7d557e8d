"""Errors that reach the user as a message, not a traceback.

The CLI catches :class:`RecoLightningError` and prints its text, so every message must
name the setting at fault and say how to fix it.
"""

from __future__ import annotations


class RecoLightningError(Exception):
    """Base class of the errors the CLI reports as a plain message."""


class ConfigError(RecoLightningError, ValueError):
    """A setting is missing, unknown or out of range; raised before training starts."""


class ImageLoadError(RecoLightningError, RuntimeError):
    """An image file could not be read or decoded; the message holds its path.

    Keeps the one-string constructor of ``RuntimeError`` so a DataLoader worker can
    re-raise it in the main process.
    """


class StorageError(RecoLightningError, OSError):
    """A file of the run could not be written (a full disk, a read-only folder); the message
    names the folder, and what was kept."""


class NonFiniteLossError(RecoLightningError, RuntimeError):
    """A loss term became NaN or infinite; the message names the step and the term."""


def positive(setting: str, value: float) -> float:
    """``value`` if it is above 0, else a ConfigError that names ``setting``.

    >>> positive("method.temperature", 0.2)
    0.2
    """
    if not value > 0:
        raise ConfigError(f"{setting}={value} must be positive")
    return value


def whole_number(setting: str, value: object, minimum: int = 1, hint: str = "") -> int:
    """``value`` if it is an integer (not a bool) of at least ``minimum``, else a ConfigError
    that names ``setting`` and ends with ``hint`` (what the setting means, or how to fix it).

    >>> whole_number("dataset.num_workers", 0, minimum=0)
    0
    >>> whole_number("knn.k", 2.5, hint="neighbours")
    Traceback (most recent call last):
    reco_lightning.errors.ConfigError: knn.k=2.5 must be a whole number >= 1: neighbours
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(
            f"{setting}={value!r} must be a whole number >= {minimum}"
            + (f": {hint}" if hint else "")
        )
    return value


def fraction(setting: str, value: float) -> float:
    """``value`` if it lies in [0, 1] (a momentum), else a ConfigError that names ``setting``."""
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{setting}={value} must lie in [0, 1]")
    return value


def one_line(error: BaseException) -> str:
    """The message of ``error`` as the user should read it: one line.

    An error raised in a DataLoader worker reaches the main process with torch's text
    "Caught ImageLoadError in DataLoader worker process 0. Original Traceback ...": the
    message worth reading is the original one, on the traceback's last line.
    """
    text = str(error)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = (
            last.split(": ", 1)[1]
            if last.split(": ", 1)[0].endswith(type(error).__name__)
            else last
        )
    return " ".join(text.split())
