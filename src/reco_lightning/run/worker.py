"""``python -m reco_lightning.run.worker CONFIG RUN_DIR``: ranks 1..N-1 of a DDP job that
:func:`reco_lightning.run.launch.local_ranks` starts (rank 0 is the process Hydra started).

A module of its own, above :mod:`reco_lightning.run.train`, so that ``launch`` (which ``train``
uses) does not import ``train`` back.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

from ..errors import RecoLightningError, one_line
from ..utils.distributed import global_rank_from_environment
from .train import train


def main(argv: list[str]) -> None:
    config_path, output_dir = Path(argv[0]), Path(argv[1])
    cfg = OmegaConf.load(config_path)
    OmegaConf.set_struct(cfg, True)
    try:
        train(cfg, output_dir)  # type: ignore[arg-type]
    except RecoLightningError as error:  # rank 0 reports the same error
        print(
            f"reco_lightning (rank {global_rank_from_environment()}): error: {one_line(error)}",
            file=sys.stderr,
        )
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
