"""``python -m reco_lightning +method=moco +reco=on``: the Hydra entry point.

Before Hydra starts, :mod:`reco_lightning.cli_checks` checks the command line for what
Hydra would report badly. After the job, a run directory that this job created but did not
use (a failed start, or a resume that continued elsewhere) is removed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .errors import RecoLightningError, one_line


@hydra.main(version_base="1.3", config_path="pkg://reco_lightning.conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Train one job; returns the final kNN accuracy (for Hydra sweepers that optimise it)."""
    from .run_dir import hydra_files_only, remove_if_unused
    from .train import train  # imported here so that `--help` stays fast

    hydra_dir = Path(HydraConfig.get().runtime.output_dir)
    created_now = hydra_files_only(hydra_dir)
    try:
        summary = train(cfg, hydra_dir, overrides=list(HydraConfig.get().overrides.task))
    except RecoLightningError as error:
        print(f"reco_lightning: error: {one_line(error)}", file=sys.stderr)
        if created_now:
            remove_if_unused(hydra_dir)
        sys.exit(2)
    if created_now and Path(summary["output_dir"]).resolve() != hydra_dir.resolve():
        remove_if_unused(hydra_dir)  # the resume continued in its own run directory
    return summary["knn_acc"]


if __name__ == "__main__":
    if any(argument in ("--help", "-h") for argument in sys.argv[1:]):
        from .cli_help import print_help

        print_help()  # without composing the config, so without importing Lightning
        sys.exit(0)
    from .cli_checks import check_or_exit

    check_or_exit("reco_lightning", sys.argv[1:])  # before Hydra creates the run directory
    main()
