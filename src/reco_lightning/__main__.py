"""``python -m reco_lightning +method=moco +reco=on``: the Hydra entry point.

``--help`` is answered first, from the presets alone, before Hydra and Lightning are
imported (:mod:`reco_lightning.run.cli_help`). Then, before Hydra starts,
:mod:`reco_lightning.run.cli_checks` checks the command line for what Hydra would report
badly. After the job, a run directory that this job created but did not use (a failed
start, or a resume that continued elsewhere) is removed. In a sweep (``-m``) a job that
fails leaves its error in its directory and the other jobs go on
(:mod:`reco_lightning.run.sweep`).
"""

from __future__ import annotations

import sys

from .run.cli_help import print_help, wants_help

if __name__ == "__main__" and wants_help(sys.argv[1:]):
    print_help()  # without composing the config, so without importing Lightning
    sys.exit(0)

# past --help: what training needs (Hydra, and through train, Lightning)
import logging  # noqa: E402
from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from .errors import RecoLightningError, one_line  # noqa: E402
from .run.cli_checks import check_or_exit  # noqa: E402
from .run.run_dir import hydra_files_only, remove_if_unused  # noqa: E402
from .run.sweep import FAILED_FILE, clear_failure, record_failure  # noqa: E402
from .run.train import train  # noqa: E402


def lightning_banners_to_stdout() -> None:
    """Lightning's banners (the devices found, tips) are information, not problems: on stdout,
    so that stderr holds warnings and, when a run fails, its one line."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr:
                handler.setStream(sys.stdout)


@hydra.main(version_base="1.3", config_path="pkg://reco_lightning.conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Train one job; returns the final kNN accuracy (for Hydra sweepers that optimise it),
    or None for a job of a sweep that failed (the sweep ends with status 2 after the others)."""
    hydra_conf = HydraConfig.get()
    hydra_dir = Path(hydra_conf.runtime.output_dir)
    created_now = hydra_files_only(hydra_dir)
    overrides = list(hydra_conf.overrides.task)
    in_sweep = hydra_conf.mode == RunMode.MULTIRUN
    if in_sweep:
        clear_failure(hydra_dir)  # this job is run again
    try:
        summary = train(cfg, hydra_dir, overrides=overrides)
    except RecoLightningError as error:
        if in_sweep:  # this job's directory keeps the error; the sweep goes on
            line = record_failure(hydra_dir, error, overrides, hydra_conf.job.num)
            print(
                f"reco_lightning: error: job {hydra_conf.job.num}: {line} "
                f"({hydra_dir / FAILED_FILE}; the sweep goes on)",
                file=sys.stderr,
            )
            return None
        print(f"reco_lightning: error: {one_line(error)}", file=sys.stderr)
        if created_now:
            remove_if_unused(hydra_dir)
        sys.exit(2)
    if created_now and Path(summary["output_dir"]).resolve() != hydra_dir.resolve():
        remove_if_unused(hydra_dir)  # the resume continued in its own run directory
    return summary["knn_acc"]


if __name__ == "__main__":
    check_or_exit("reco_lightning", sys.argv[1:])  # before Hydra creates the run directory
    lightning_banners_to_stdout()
    main()
