"""The jobs of a Hydra multirun (``-m``) that fail: the sweep goes on, and says so at the end.

A job that stops with one of our errors (a non-finite loss, a setting out of range) ends
only itself: the entry point writes the one-line error into the job's directory as
``failed.json`` (with the exception's class and the job's overrides), prints the line and
returns, so the sweep's other jobs still run. :class:`FailedJobs`, a Hydra callback that
``conf/config.yaml`` configures (``hydra.callbacks.failed_jobs``), looks for those files when
the sweep ends and then exits with status 2, so a script or a scheduler still sees that the
sweep did not fully succeed. It reads the files rather than counting failures in memory,
because a launcher may run the jobs in other processes or on other machines
(``hydra/launcher=slurm``). :mod:`.report` lists the failed jobs beside the finished ones.
A single run (no ``-m``) is unchanged: one line, exit status 2.

>>> from pathlib import Path
>>> failed_jobs(Path("/nonexistent"))
[]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ..errors import one_line

#: what a failed job of a sweep leaves in its directory
FAILED_FILE = "failed.json"


def record_failure(job_dir: Path, error: BaseException, overrides: list[str], job: Any) -> str:
    """Write ``job_dir/failed.json`` for ``error``; returns the one-line error."""
    line = one_line(error)
    record = {"job": job, "error": line, "type": type(error).__name__, "overrides": overrides}
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / FAILED_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return line


def clear_failure(job_dir: Path) -> None:
    """Remove the ``failed.json`` of an earlier attempt at this job (it is run again now)."""
    (job_dir / FAILED_FILE).unlink(missing_ok=True)


def read_failure(path: Path) -> dict[str, Any]:
    """A ``failed.json``; one that cannot be read still counts as a failure."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        return {"error": f"unreadable {path.name} ({error})", "type": None, "overrides": []}
    return record if isinstance(record, dict) else {"error": str(record), "overrides": []}


def failed_jobs(sweep_dir: Path) -> list[Path]:
    """The job directories under ``sweep_dir`` that hold a ``failed.json``."""
    return (
        sorted(path.parent for path in sweep_dir.rglob(FAILED_FILE)) if sweep_dir.is_dir() else []
    )


class FailedJobs(Callback):
    """When a sweep ends: if any of its jobs failed, say which, and exit with status 2."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        failed = failed_jobs(sweep_dir)
        if not failed:
            return
        names = ", ".join(str(job.relative_to(sweep_dir)) for job in failed)
        print(
            f"reco_lightning: error: {len(failed)} job(s) of the sweep failed ({names} in "
            f"{sweep_dir}; each holds its error in {FAILED_FILE}): python -m "
            f"reco_lightning.run.report {sweep_dir} lists them beside the finished jobs",
            file=sys.stderr,
        )
        raise SystemExit(2)  # not an Exception: Hydra's callback runner would only warn


__all__ = [
    "FAILED_FILE",
    "FailedJobs",
    "clear_failure",
    "failed_jobs",
    "read_failure",
    "record_failure",
]
