"""``python -m reco_lightning +method=moco +reco=on``: the Hydra entry point, nothing else."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .errors import RecoLightningError


@hydra.main(version_base="1.3", config_path="pkg://reco_lightning.conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    """Train one job; returns the final kNN accuracy (for Hydra sweepers that optimise it)."""
    from .train import train  # imported here so that `--help` stays fast

    try:
        summary = train(cfg, Path(HydraConfig.get().runtime.output_dir))
    except RecoLightningError as error:
        print(f"reco_lightning: error: {error}", file=sys.stderr)
        sys.exit(2)
    return summary["knn_acc"]


if __name__ == "__main__":
    main()
