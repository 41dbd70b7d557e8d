"""The run directory: one directory holds one run, and a resume continues the run it names.

A cluster job is pre-empted and rerun every day, so these rules decide what a rerun does:

* A directory that already holds a run (its ``config.yaml``, ``summary.json``,
  ``metrics.csv`` or a checkpoint) is never trained into afresh: without ``resume`` the job
  stops before it writes anything, and says how to continue or where to start anew.
* ``resume=RUN_DIR`` (or a checkpoint inside it, or ``resume=auto``) continues *in that
  directory*, with the run's stored ``config.yaml``; the command line may change settings
  such as ``trainer.max_epochs``, but not what the run is (its method, ReCo on/off, its
  dataset): a contradiction stops with one line that names it.
* The directory and its ``checkpoints/`` must be writable before training starts, not
  after the first epoch.

>>> from pathlib import Path
>>> holds_run(Path("/nonexistent"))
[]
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from ..errors import ConfigError
from .checkpoints import checkpoint_file

#: what a run leaves in its directory (Hydra's own ``.hydra/`` record does not count)
RUN_FILES = ("config.yaml", "summary.json", "metrics.csv")
#: config groups that decide what a run *is*: (group on the command line, key in the config)
IDENTITY = (("method", "method.name"), ("reco", "reco.enabled"), ("dataset", "dataset.name"))
#: settings of the ``strategy`` group, which a resume may change (e.g. to more devices)
STRATEGY_KEYS = ("strategy", "accelerator", "devices", "num_nodes", "sync_batchnorm")


def holds_run(path: Path) -> list[str]:
    """The files in ``path`` that show it holds a run (empty when it holds none)."""
    found = [name for name in RUN_FILES if (path / name).is_file()]
    return found + [f"checkpoints/{c.name}" for c in sorted((path / "checkpoints").glob("*.ckpt"))]


def check_fresh(output_dir: Path) -> None:
    """Refuse to start a new run in a directory that holds one (nothing is written)."""
    found = holds_run(output_dir)
    if found:
        raise ConfigError(
            f"{output_dir} already holds a run "
            f"({', '.join(found[:3])}{', ...' if len(found) > 3 else ''}); "
            "continue it with resume=auto (and the same hydra.run.dir), or start a new run in "
            "another "
            "directory (another hydra.run.dir, or none for a new outputs/DATE/TIME)"
        )


def check_writable(output_dir: Path) -> None:
    """Fail now, with the path, if the run could not save its checkpoints later."""
    for folder in (output_dir, output_dir / "checkpoints"):
        try:
            _write_test(folder)
        except OSError as error:
            raise ConfigError(
                f"cannot write into {folder} ({error.strerror or error}): the run could not save "
                "its "
                "checkpoints; make it writable or choose another hydra.run.dir"
            ) from None


def wants_resume(resume: Any) -> bool:
    """Whether ``resume`` asks to continue a run (``auto``, a file or a directory)."""
    return not (
        resume is None or resume is False or str(resume).lower() in {"", "none", "null", "false"}
    )


def resolve_resume(resume: Any, output_dir: Path) -> Path | None:
    """The checkpoint that ``resume`` names: ``auto``, a ``.ckpt`` file or a run directory.

    ``auto`` takes ``checkpoints/last.ckpt`` of this run's directory when it exists (rerun
    the command with the same ``hydra.run.dir``) and starts afresh when it does not.
    """
    if not wants_resume(resume):
        return None
    if str(resume) == "auto":
        last = output_dir / "checkpoints" / "last.ckpt"
        return last if last.is_file() else None
    return checkpoint_file(
        resume,
        "resume",
        ", a run directory that holds checkpoints/last.ckpt, or resume=auto with the run's "
        "hydra.run.dir",
    )


def run_of_checkpoint(checkpoint: Path) -> Path | None:
    """The run directory a checkpoint belongs to (``RUN/checkpoints/x.ckpt``), if it has a
    config."""
    run = (
        checkpoint.resolve().parent.parent
        if checkpoint.resolve().parent.name == "checkpoints"
        else None
    )
    return run if run is not None and (run / "config.yaml").is_file() else None


def _identity(cfg: DictConfig) -> dict[str, Any]:
    values = {key: OmegaConf.select(cfg, key, default=None) for _, key in IDENTITY}
    values["reco.enabled"] = bool(values["reco.enabled"])
    root = OmegaConf.select(cfg, "dataset.root", default=None, throw_on_missing=False)
    values["dataset.root"] = (
        str(Path(str(root)).expanduser().resolve()) if root not in (None, "???") else None
    )
    return values


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


#: the keys with which Hydra's ``instantiate`` builds objects: code, not settings
INSTANTIATE_KEYS = ("_target_", "_partial_", "_args_", "_recursive_", "_convert_")


def load_stored_config(path: Path) -> DictConfig:
    """A run directory's ``config.yaml``, read as data: a malformed file, or one that names
    something to build (``_target_`` and Hydra's other instantiate keys), is a one-line
    ConfigError. The trackers' classes come from the package's presets, never from here."""
    try:
        stored = OmegaConf.load(path)
        container = OmegaConf.to_container(stored, resolve=False)
    except Exception as error:  # noqa: BLE001 - YAML's and OmegaConf's errors, on one line
        reason = " ".join(str(error).split())[:160]
        raise ConfigError(
            f"{path} is not a readable run config ({type(error).__name__}: {reason}): restore "
            "it, or start a new run in another directory"
        ) from None
    if not isinstance(stored, DictConfig):
        raise ConfigError(f"{path} holds no settings: restore it, or start a new run elsewhere")
    for where, key in _instantiate_keys(container):
        raise ConfigError(
            f"{path}: {where}{key} is not a setting but something to build, which a run "
            "directory cannot choose: remove it from config.yaml, or start a new run"
        )
    return stored


def _instantiate_keys(node: Any, where: str = "") -> list[tuple[str, str]]:
    """Every (path, key) in ``node`` whose key is one of :data:`INSTANTIATE_KEYS`."""
    found: list[tuple[str, str]] = []
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else ()
    )
    for key, value in items:
        if isinstance(key, str) and key in INSTANTIATE_KEYS and not where.startswith("logger."):
            found.append((where, key))
        found += _instantiate_keys(value, f"{where}{key}.")
    return found


def config_for_resume(
    cfg: DictConfig, run_dir: Path, overrides: Sequence[str] | None, resume_arg: Any
) -> DictConfig:
    """The config of a run that continues in ``run_dir``: its stored ``config.yaml`` with the
    command line's ``overrides`` (Hydra's ``overrides.task``) on top, or ``cfg`` as given when
    they are ``None`` (a call from Python). Either way, a method, ReCo setting or dataset
    other than the stored run's is refused.
    """
    stored = load_stored_config(run_dir / "config.yaml")
    given, was = _identity(cfg), _identity(stored)
    if overrides is None:
        stated = set(given)
    else:  # only what the command line states can contradict the run
        keys = {_override_key(o) for o in overrides}
        stated = {key for group, key in IDENTITY if group in keys or key in keys}
        stated |= {"dataset.root"} & keys
    for key in sorted(stated):
        if given[key] is not None and given[key] != was[key]:
            raise ConfigError(
                f"resume={resume_arg}: the run in {run_dir} has {key}={was[key]}, the command line "
                "gives "
                f"{key}={given[key]}; drop that override to continue the run, or start a new run "
                "without resume"
            )
    if overrides is None:
        return cfg
    merged = stored.copy()
    OmegaConf.set_struct(merged, False)
    for override in overrides:
        key = _override_key(override)
        if key == "strategy":
            for name in STRATEGY_KEYS:
                if name in cfg.trainer:
                    OmegaConf.update(merged, f"trainer.{name}", cfg.trainer[name], merge=False)
        elif not key.startswith("hydra") and not any(key == group for group, _ in IDENTITY):
            value = None if override.startswith("~") else OmegaConf.select(cfg, key)
            OmegaConf.update(merged, key, value, merge=False)
    with open_dict(merged):
        merged.resume = cfg.get("resume")
    OmegaConf.set_struct(merged, True)
    return merged


def hydra_files_only(path: Path) -> bool:
    """Whether ``path`` holds nothing but what Hydra writes into a new run directory."""
    if not path.is_dir():
        return True
    return all(entry.name == ".hydra" or entry.suffix == ".log" for entry in path.iterdir())


def remove_if_unused(path: Path) -> None:
    """Remove a run directory this job created and left without a checkpoint."""
    if path.is_dir() and not any(path.glob("checkpoints/*.ckpt")):
        shutil.rmtree(path, ignore_errors=True)
        _remove_empty(path.parent, levels=2)  # outputs/DATE/TIME: DATE too, once empty


def probe_run_dir(run_dir: str) -> None:
    """Before Hydra creates ``hydra.run.dir``: can it be created and written?"""
    path = Path(os.path.expanduser(run_dir))
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    problem = None
    if existing.exists() and not existing.is_dir():
        problem = f"{existing} is a file"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{existing} is not writable"
    else:
        try:
            _write_test(path)
        except OSError as error:
            problem = error.strerror or str(error)
        finally:  # the folders this test created
            _remove_empty(path, levels=len(path.relative_to(existing).parts))
    if problem:
        raise ConfigError(
            f"hydra.run.dir={run_dir} cannot be written ({problem}): choose a writable directory"
        )


def _write_test(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
        pass


def _remove_empty(path: Path, levels: int) -> None:
    """Remove ``path`` and its parents while they are empty, ``levels`` folders at most."""
    for _ in range(levels):
        try:
            path.rmdir()
        except OSError:
            return
        path = path.parent


__all__ = [
    "check_fresh",
    "check_writable",
    "config_for_resume",
    "holds_run",
    "hydra_files_only",
    "probe_run_dir",
    "remove_if_unused",
    "resolve_resume",
    "run_of_checkpoint",
    "wants_resume",
]
