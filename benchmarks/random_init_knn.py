"""kNN accuracy of an untrained backbone, before and after its BatchNorm has seen data.

    python benchmarks/random_init_knn.py                 # the bundled digits, seeds 0 and 1

The summary's "kNN at random init" is the backbone exactly as initialised, in eval mode:
its BatchNorm layers still hold their initial statistics (mean 0, variance 1), so they
do not normalise at all. The first training steps replace those statistics with the
data's, before any weight has moved. This script measures both for the two
initialisations of ``backbone.zero_init_residual``, with the kNN monitor the training runs
use (weighted kNN on the held-out split, the dataset preset's k):

* ``as initialised``: what the summary prints;
* ``BN from data``: the same weights after the BatchNorm statistics are re-estimated on
  the strong training views (what one epoch with a learning rate of zero would give).

The gap between the two columns is how far every method falls in its first epoch
regardless of what it learns, so it is the part of the random-initialisation figure
that training cannot be expected to beat at once.
"""

from __future__ import annotations

import argparse
import warnings

import torch
from hydra import compose, initialize_config_module
from torch import nn

from reco_lightning.metrics.knn import knn_accuracy
from reco_lightning.models import build_backbone
from reco_lightning.run.train import build_datamodule


def features(net: nn.Module, loader) -> tuple[torch.Tensor, torch.Tensor]:
    net.eval()
    xs, ys = [], []
    with torch.no_grad():
        for images, labels in loader:
            xs.append(net(images))
            ys.append(labels)
    return torch.cat(xs), torch.cat(ys)


def knn(
    net: nn.Module, bank_loader, query_loader, num_classes: int, k: int, temperature: float
) -> float:
    bank_x, bank_y = features(net, bank_loader)
    query_x, query_y = features(net, query_loader)
    return knn_accuracy(bank_x, bank_y, query_x, query_y, num_classes, k, temperature)


def recalibrate_batchnorm(net: nn.Module, train_loader) -> None:
    """Replace every BatchNorm's running statistics by their average over the loader."""
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average
    net.train()
    with torch.no_grad():
        for batch in train_loader:
            for view in batch["strong"]:
                net(view)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides, e.g. dataset=imagefolder dataset.root=DIR"
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    with initialize_config_module(version_base="1.3", config_module="reco_lightning.conf"):
        cfg = compose("config", overrides=["+method=moco", *args.overrides])
    datamodule = build_datamodule(cfg, weak_view=False)
    datamodule.setup("fit")
    bank_loader, query_loader = datamodule.val_dataloader()
    small_stem = cfg.backbone.small_stem
    small_stem = datamodule.image_size <= 64 if small_stem == "auto" else bool(small_stem)
    settings = (datamodule.num_classes, cfg.knn.k, cfg.knn.temperature)

    print(
        f"dataset {cfg.dataset.name}, {cfg.backbone.name} width {cfg.backbone.width}, "
        f"kNN k={cfg.knn.k}\n"
    )
    print("| zero_init_residual | seed | as initialised | BN from data |")
    print("| --- | ---: | ---: | ---: |")
    for zero_init in (False, True):
        for seed in (int(s) for s in args.seeds.split(",")):
            torch.manual_seed(seed)
            net, _ = build_backbone(cfg.backbone.name, cfg.backbone.width, small_stem, zero_init)
            untouched = knn(net, bank_loader, query_loader, *settings)
            recalibrate_batchnorm(net, datamodule.train_dataloader())
            calibrated = knn(net, bank_loader, query_loader, *settings)
            print(
                f"| {str(zero_init).lower()} | {seed} | {untouched:.2%} | {calibrated:.2%} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
