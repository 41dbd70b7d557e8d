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
* One process trains in a directory at a time: a run holds the directory's lock file
  (:func:`run_lock`) while it trains, and a second process is refused with the owner's pid.

>>> from pathlib import Path
>>> holds_run(Path("/nonexistent"))
[]
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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
#: the lock file of a run directory that a process trains in (see :func:`run_lock`)
LOCK_FILE = ".run.lock"
#: a lock file without a readable record counts as being written for this long, then as stale
LOCK_WRITE_GRACE_S = 5.0


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
        _check_frozen(cfg, stored, run_dir, resume_arg)
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
    _check_frozen(merged, stored, run_dir, resume_arg)
    with open_dict(merged):
        merged.resume = cfg.get("resume")
    OmegaConf.set_struct(merged, True)
    return merged


#: settings a continued run keeps: the architecture (its weights' shapes), the queues, and
#: what fixes the order and views of the data; anything else (the epochs, the devices, the
#: loggers) may change on resume
FROZEN_ON_RESUME = (
    "backbone",
    "method",
    "seed",
    "dataset.batch_size",
    "dataset.image_size",
    "dataset.queue_size",
    "dataset.val_fraction",
    "reco.bank_size",
    "reco.negatives_size",
)


def _check_frozen(cfg: DictConfig, stored: DictConfig, run_dir: Path, resume_arg: Any) -> None:
    """ConfigError, one line, for the first :data:`FROZEN_ON_RESUME` setting that ``cfg``
    changes against the run's stored config (checked before anything is written)."""
    for prefix in FROZEN_ON_RESUME:
        ours, theirs = OmegaConf.select(cfg, prefix), OmegaConf.select(stored, prefix)
        if ours == theirs:
            continue
        key, was = prefix, theirs
        if isinstance(ours, DictConfig) and isinstance(theirs, DictConfig):
            changed = sorted(k for k in {*ours, *theirs} if ours.get(k) != theirs.get(k))
            key, was = f"{prefix}.{changed[0]}", theirs.get(changed[0])
        raise ConfigError(
            f"resume={resume_arg}: {key} cannot change when a run continues (the run in "
            f"{run_dir} has {key}={was}, which its checkpoint's weights, queues and data order "
            "were built with): drop that override, or start a new run without resume"
        )


def hydra_files_only(path: Path) -> bool:
    """Whether ``path`` holds nothing but what Hydra writes into a new run directory (and
    perhaps the stale lock of a start that was killed); a directory that a live process has
    locked is in use, however empty."""
    if not path.is_dir():
        return True
    if lock_owner(path) is not None:
        return False
    own = (".hydra", LOCK_FILE, _takeover_file(path / LOCK_FILE).name)
    return all(entry.name in own or entry.suffix == ".log" for entry in path.iterdir())


def remove_if_unused(path: Path) -> None:
    """Remove a run directory this job created and left without a checkpoint (never one
    that another live process has locked meanwhile)."""
    if path.is_dir() and not any(path.glob("checkpoints/*.ckpt")) and lock_owner(path) is None:
        shutil.rmtree(path, ignore_errors=True)
        _remove_empty(path.parent, levels=2)  # outputs/DATE/TIME: DATE too, once empty


def probe_run_dir(run_dir: str) -> None:
    """Before Hydra creates ``hydra.run.dir``: can it be created and written?"""
    path = Path(os.path.expanduser(run_dir))
    existing = path
    try:
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
    except OSError as error:  # a name longer than the file system allows
        raise ConfigError(
            f"hydra.run.dir={run_dir[:60]}... cannot be used ({error.strerror}): choose a "
            "shorter path"
        ) from None
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


@contextmanager
def run_lock(path: Path, take: bool = True) -> Iterator[None]:
    """Hold the lock of run directory ``path`` while the block runs: one process per run.

    Why: the one-run check (:func:`check_fresh`, ``resume``) looks at the files a run leaves,
    so two processes started into one directory (a second ``resume=auto`` while the first
    still trains, or two fresh starts at once) would both pass it and mix their configs,
    checkpoints and metrics. The lock file (:data:`LOCK_FILE`) holds the owner's pid and host,
    is created atomically (``O_CREAT | O_EXCL``) and is removed when the block ends, on an
    error or ``SystemExit`` (SIGTERM) too. A process that finds a lock whose owner is alive
    is refused with a :class:`ConfigError` that names the owner; a lock whose pid is dead on
    this host (a run killed with SIGKILL) is taken over silently. The take-over is itself
    guarded by a second ``O_EXCL`` file, so two processes that find the same stale lock at
    once cannot both remove it and each create their own. A lock of another host cannot be
    checked from here, so it counts as held. With ``take=False`` (ranks 1..N-1 of a DDP
    run, which rank 0 starts, or torchrun or SLURM beside it) nothing is taken or checked:
    the directory is rank 0's, and rank 0 holds its lock.
    """
    if not take:
        yield
        return
    lock = path / LOCK_FILE
    record = _take_lock(lock)
    try:
        yield
    finally:
        found = _read_lock(lock, wait=False)
        if found is not None and found[0] == record:  # never remove another process's lock
            lock.unlink(missing_ok=True)


def lock_owner(path: Path) -> dict[str, Any] | None:
    """The record (``pid``, ``host``, ``started``) of the live process that holds run directory
    ``path``'s lock, or None when no process does (no lock, or a stale one)."""
    found = _read_lock(path / LOCK_FILE)
    return found[1] if found is not None and found[1] is not None and _alive(found[1]) else None


def check_unlocked(path: Path) -> None:
    """Refuse to start in run directory ``path`` while another live process holds its lock."""
    owner = lock_owner(path)
    if owner is not None:
        raise ConfigError(_in_use(path, owner))


def _in_use(path: Path, owner: dict[str, Any]) -> str:
    """The one-line refusal: the directory, its owner, and what to do."""
    pid, host = owner["pid"], owner["host"]
    if pid == "unknown":
        return (
            f"{path} is locked by {path / LOCK_FILE}, which this process cannot read: run as the "
            "user who started that run, or choose another hydra.run.dir"
        )
    if host == socket.gethostname():
        where, gone = "", ""
    else:  # its pid cannot be checked from here: it may have died with its machine
        where = f" on host {host}"
        gone = f"; if that run is gone (its machine failed, say), remove {path / LOCK_FILE}"
    return (
        f"{path} is in use by another run (pid {pid}{where}, started {owner.get('started', '?')})"
        f": wait until it ends, or stop that process (kill {pid}), then run this command "
        f"again{gone}"
    )


def _take_lock(lock: Path) -> str:
    """Create ``lock`` for this process (taking over a stale one); returns the record written."""
    record = json.dumps(
        {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
    )
    deadline = time.monotonic() + 2 * LOCK_WRITE_GRACE_S
    while time.monotonic() < deadline:  # a round takes the lock, is refused or clears a stale one
        try:
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            found = _read_lock(lock)
            if found is None:
                continue  # its owner removed it meanwhile
            text, owner = found
            if owner is not None and _alive(owner):
                raise ConfigError(_in_use(lock.parent, owner)) from None
            _remove_stale(lock, text)
            continue
        except OSError as error:
            raise _unwritable(lock, error) from None
        try:
            with os.fdopen(handle, "w") as file:
                file.write(record)
        except OSError as error:
            lock.unlink(missing_ok=True)
            raise _unwritable(lock, error) from None
        return record
    raise ConfigError(
        f"could not lock {lock.parent}: other processes keep taking its lock ({lock}); start "
        "one process at a time in that directory"
    )


def _unwritable(lock: Path, error: OSError) -> ConfigError:
    return ConfigError(
        f"cannot write into {lock.parent} ({error.strerror or error}): the run could not lock its "
        "directory; make it writable or choose another hydra.run.dir"
    )


def _read_lock(lock: Path, wait: bool = True) -> tuple[str, dict[str, Any] | None] | None:
    """The text of ``lock`` and its record (None when unreadable), or None when there is no
    lock. A lock just created is empty until its owner writes the record: ``wait`` gives it
    up to :data:`LOCK_WRITE_GRACE_S` from its creation."""
    while True:
        try:
            text = lock.read_text()
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return None
        except OSError:  # unreadable (another user's lock, say): held by someone unknown
            return "", {"pid": "unknown", "host": "unknown"}
        try:
            record = json.loads(text)
        except ValueError:
            record = None
        if not isinstance(record, dict) or not {"pid", "host"} <= record.keys():
            record = None
        if record is not None or not wait or age > LOCK_WRITE_GRACE_S:
            return text, record
        time.sleep(0.05)


def _alive(owner: dict[str, Any]) -> bool:
    """Whether the lock's owner may still run: a live pid of this host, or another host's."""
    if owner.get("host") != socket.gethostname():
        return True  # cannot be checked from this machine
    pid = owner.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return False
    try:  # a killed process that its parent has not reaped yet (Linux) is dead
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _takeover_file(lock: Path) -> Path:
    return lock.with_name(lock.name + ".takeover")


def _remove_stale(lock: Path, seen: str) -> None:
    """Remove ``lock`` if it still holds ``seen`` (the stale record): only one process at a
    time, the one that creates the take-over file, may look and remove."""
    guard = _takeover_file(lock)
    try:
        handle = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:  # another process is taking over now, or was killed doing so
        try:
            if time.time() - guard.stat().st_mtime > LOCK_WRITE_GRACE_S:
                guard.unlink(missing_ok=True)
        except OSError:  # gone meanwhile, or not ours to remove: the next round sees
            pass
        time.sleep(0.05)
        return
    try:
        found = _read_lock(lock, wait=False)
        if found is not None and found[0] == seen:
            lock.unlink(missing_ok=True)
    finally:
        os.close(handle)
        guard.unlink(missing_ok=True)


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
    "LOCK_FILE",
    "check_fresh",
    "check_unlocked",
    "check_writable",
    "config_for_resume",
    "holds_run",
    "hydra_files_only",
    "lock_owner",
    "probe_run_dir",
    "remove_if_unused",
    "resolve_resume",
    "run_lock",
    "run_of_checkpoint",
    "wants_resume",
]
