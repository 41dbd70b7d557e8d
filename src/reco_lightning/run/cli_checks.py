"""Checks of the raw command line, run before Hydra creates the run directory.

Hydra reports some mistakes badly for our users: a misspelt key without ``+``
(``trainer.max_epoch=2``) gets "To append to your config use +trainer.max_epoch=2", which
would add a setting nothing reads; an unwritable ``hydra.run.dir`` ends in a traceback; and
a ``hydra.run.dir`` that holds a run, or that another process trains in now, gets its
``.hydra/`` record overwritten before our code could refuse it. Each of these becomes one
line that names the setting and the fix.

>>> check_overrides(["+method=moco", "trainer.max_epochs=2"])  # fine: returns None
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError, RecoLightningError, one_line
from ..utils.distributed import global_rank_from_environment
from .run_dir import check_fresh, check_unlocked, probe_run_dir, wants_resume

#: Hydra's message for an override of a key that the composed config does not have
_NOT_IN_STRUCT = re.compile(r"Could not override '([^']+)'")
#: Hydra's message for a config group option that does not exist (``+method=swav``)
_NO_OPTION = re.compile(r"Could not find '([\w/]+)/([^']+)'")
#: Hydra's message for a value the schema cannot take (``knn.k=abc``)
_BAD_VALUE = re.compile(r"Error merging override (\S+)")


def _value(overrides: Sequence[str], key: str) -> str | None:
    for override in overrides:
        name, _, value = override.partition("=")
        if name.lstrip("+") == key:
            return value
    return None


def check_quoting(argv: Sequence[str]) -> None:
    """ConfigError for a value with characters outside ASCII that is not quoted: Hydra's
    override grammar would stop with a lexer traceback (a folder named ``bilder_äöü``)."""
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and not value.isascii() and not (value[:1] in "'\"" and value[-1:] == value[:1]):
            raise ConfigError(
                f"{arg}: Hydra's command line takes characters outside ASCII only inside quotes: "
                f"write '{key}=\"{value}\"' (the outer single quotes are for the shell)"
            )


def check_overrides(argv: Sequence[str]) -> None:
    """ConfigError for the first problem of the command line that Hydra would report badly."""
    if any(arg.startswith("-") for arg in argv):
        return  # --multirun, --help, --cfg ...: Hydra's own business
    overrides = [arg for arg in argv if "=" in arg]
    run_dir = _value(overrides, "hydra.run.dir")
    probe_run_dir(run_dir or "outputs")
    if run_dir is not None and global_rank_from_environment() == 0:  # rank 0 holds the lock
        check_unlocked(Path(run_dir).expanduser())
    if run_dir is not None and not wants_resume(_value(overrides, "resume")):
        check_fresh(Path(run_dir).expanduser())
    check_keys([o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/"))])


def _compose(overrides: list[str], config_name: str) -> DictConfig:
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="reco_lightning.conf", version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def _options(group: str) -> list[str]:
    """The presets of a config group (``method`` -> moco, simclr, byol, simsiam)."""
    from importlib.resources import files

    folder = files("reco_lightning.conf").joinpath(group)
    return sorted(
        entry.name.removesuffix(".yaml")
        for entry in folder.iterdir()
        if entry.name.endswith(".yaml") and entry.name != "base.yaml"
    )


def check_keys(overrides: list[str], config_name: str = "config") -> None:
    """A misspelt key without ``+`` gets the did-you-mean of a misspelt key with ``+``; an
    unknown preset (``+method=swav``) gets the list of presets."""
    try:
        _compose(overrides, config_name)
        return
    except Exception as error:  # noqa: BLE001 - anything else is left for Hydra to report
        message = str(error)
        bad_value = _BAD_VALUE.search(message)
        if bad_value is not None and error.__cause__ is not None:
            reason = str(error.__cause__).splitlines()[0]
            raise ConfigError(
                f"{bad_value.group(1)}: {reason} (see the schema: --cfg job lists every key)"
            ) from None
    option = _NO_OPTION.search(message)
    if option is not None:
        group, name = option.groups()
        plus = next(
            (
                o[: len(o) - len(o.lstrip("+"))]
                for o in overrides
                if o.lstrip("+").startswith(f"{group}=")
            ),
            "",
        )
        choices = ", ".join(f"{plus}{group}={choice}" for choice in _options(group))
        raise ConfigError(f"{plus}{group}={name} is unknown: choose one of {choices}")
    match = _NOT_IN_STRUCT.search(message)
    if match is None:
        return
    key = match.group(1)
    rest = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key]
    try:
        cfg = _compose(rest, config_name)
    except Exception:  # noqa: BLE001
        return
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    choices = sorted(node.keys()) if isinstance(node, DictConfig) else []
    close = difflib.get_close_matches(leaf, [str(c) for c in choices], n=1)
    where = f"{parent}." if parent else ""
    hint = f"did you mean {where}{close[0]}?" if close else f"valid keys are {choices}"
    raise ConfigError(f"{key} is not a known setting: {hint}")


def check_or_exit(program: str, argv: Sequence[str], config_name: str = "config") -> None:
    """The checks of ``python -m program``'s command line; a problem prints one line and
    exits with status 2. The training command checks everything above (``config``); eval
    and export, whose runs change nothing until their checks pass, only the keys."""
    try:
        check_quoting(argv)
        if config_name == "config":
            check_overrides(argv)
        elif not any(arg.startswith("-") for arg in argv):
            check_keys(
                [
                    a
                    for a in argv
                    if "=" in a and not a.lstrip("+~").startswith(("hydra.", "hydra/"))
                ],
                config_name,
            )
    except RecoLightningError as error:
        print(f"{program}: error: {one_line(error)}", file=sys.stderr)
        sys.exit(2)


__all__ = ["check_keys", "check_or_exit", "check_overrides"]
