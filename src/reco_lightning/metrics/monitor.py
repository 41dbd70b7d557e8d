"""What the built-in methods measure on the validation data each epoch, as a callback.

:class:`ValidationMonitor` takes the backbone features that a module's ``validation_step``
returns and logs ``val/knn_acc`` (weighted kNN of the query images against the bank
images), ``val/linear_acc`` (the module's online probe, ``classifier``) and the relation
diagnostics of the gathered query features (neighbour purity, class cosines, alignment of
two strong views, uniformity). The probe's weights stay in the module, where its optimizer
trains them and DDP averages their gradient; only its measurement lives here.

A module declares the monitor in ``configure_callbacks``, so it runs with any Trainer:

>>> monitor = ValidationMonitor(num_classes=10, knn_k=20)
>>> monitor.knn.k
20
"""

from __future__ import annotations

from typing import Any

import lightning as L
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from .diagnostics import relation_diagnostics, view_pair_features
from .knn import KNNMonitor

#: validation samples the per-epoch relation diagnostics use (pairwise cost grows as n^2)
DIAGNOSTIC_SAMPLES = 5000
#: validation images whose two strong views give the per-epoch alignment
ALIGNMENT_IMAGES = 256


class ValidationMonitor(L.Callback):
    """kNN accuracy, online-probe accuracy and relation diagnostics of each validation epoch.

    The validation data comes as two loaders (see :class:`~reco_lightning.SSLDataModule`):
    loader 0 gives the bank (training images), loader 1 the queries (held-out images), on
    which the probe is scored. ``validation_step`` returns the batch's backbone features.

    Args:
        num_classes: classes of the labelled validation data.
        knn_k, knn_temperature: the weighted kNN's neighbours and temperature.
    """

    def __init__(self, num_classes: int, knn_k: int = 200, knn_temperature: float = 0.1) -> None:
        self.knn = KNNMonitor(num_classes, knn_k, knn_temperature)
        self.linear_acc = MulticlassAccuracy(num_classes, average="micro")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.knn.to(pl_module.device)
        self.linear_acc.to(pl_module.device)

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not isinstance(outputs, Tensor):
            return  # a module whose validation_step returns no features
        features, labels = outputs.float(), batch[1]
        self.knn.update(features, labels, bank=dataloader_idx == 0)
        if dataloader_idx == 1:
            self.linear_acc.update(pl_module.classifier(features).detach(), labels)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.knn.has_data():  # e.g. a sanity check that saw no batches
            self.knn.reset()
            self.linear_acc.reset()
            return
        result = self.knn.compute()  # gathered from every rank
        self.knn.reset()
        pl_module.log("val/knn_acc", result.accuracy.item(), prog_bar=True)
        pl_module.log("val/linear_acc", self.linear_acc.compute().item())
        self.linear_acc.reset()
        features = result.query_features[:DIAGNOSTIC_SAMPLES]
        labels = result.query_labels[:DIAGNOSTIC_SAMPLES]
        if labels.shape[0] < 2:
            return
        view1 = view2 = None
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "alignment_loader"):
            loader = datamodule.alignment_loader(ALIGNMENT_IMAGES)
            view1, view2 = view_pair_features(pl_module.backbone, loader, pl_module.device)
        for name, value in relation_diagnostics(features, labels, view1, view2).items():
            pl_module.log(f"val/{name.replace('@', '_at_')}", value)


__all__ = ["ALIGNMENT_IMAGES", "DIAGNOSTIC_SAMPLES", "ValidationMonitor"]
