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


class NonFiniteLossError(RecoLightningError, RuntimeError):
    """A loss term became NaN or infinite; the message names the step and the term."""
