"""``python -m reco_lightning.eval checkpoint=PATH``: kNN and linear evaluation, relation
diagnostics and a feature map of a trained backbone (see :mod:`reco_lightning.run.evaluate`)."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from ..errors import RecoLightningError, one_line
from ..run.cli_checks import check_or_exit
from ..run.evaluate import evaluate


@hydra.main(version_base="1.3", config_path="pkg://reco_lightning.conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    try:
        evaluate(cfg)
    except RecoLightningError as error:
        print(f"reco_lightning.eval: error: {one_line(error)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    check_or_exit("reco_lightning.eval", sys.argv[1:], "eval")  # a misspelt key gets a did-you-mean
    main()
