"""Generic checks of config sections that must fail before any training starts.

Hydra's struct mode already rejects an override of a key that does not exist; these
helpers cover what it cannot see: keys added with ``+`` that no constructor takes, and a
mandatory value left unset. Each message names the setting and the fix. This module
imports nothing of the package but its errors, so that every layer may use it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from ..errors import ConfigError


def reject_unknown_keys(section: str, keys: Iterable[str], allowed: Iterable[str]) -> None:
    """ConfigError for the first key in ``keys`` that is not in ``allowed``, with a suggestion."""
    allowed = sorted(set(allowed))
    for key in keys:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean {section}.{close[0]}?" if close else f"valid keys are {allowed}"
            raise ConfigError(f"{section}.{key} is not a known setting: {hint}")


def as_dict(node: Any, section: str = "") -> dict[str, Any]:
    """A resolved plain dict of a config node (``{}`` for None).

    A mandatory value left at ``???`` (such as ``dataset.root`` of ``dataset=imagefolder``)
    becomes a ConfigError that says which setting to add.
    """
    if node is None:
        return {}
    try:
        return OmegaConf.to_container(node, resolve=True, throw_on_missing=True)  # type: ignore[return-value]
    except MissingMandatoryValue as error:
        key = f"{section}.{error.key}" if section else str(error.full_key)
        raise ConfigError(f"{key} must be set: add {key}=... to the command line") from None
