"""One training run: compose -> build data, method, trainer -> fit -> summarise.

Everything the run produces lands in its output directory (Hydra's run directory under the
CLI): the resolved ``config.yaml``, ``checkpoints/last.ckpt`` and the best checkpoint by
``val/knn_acc``, ``metrics.csv`` (and TensorBoard logs where installed) and ``summary.json``.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from .config_checks import accepted_arguments, as_dict, reject_unknown_keys, require_method
from .data import SSLDataModule
from .errors import ConfigError
from .methods import METHODS, SSLMethod
from .reco import ReCoConfig

#: dataset keys that describe the data but are not DataModule arguments
DATASET_HINT_KEYS = {"queue_size"}


def reco_settings(cfg: DictConfig) -> dict[str, Any] | None:
    """ReCo's settings, or None when ``+reco`` is absent or ``off`` (the same run either way)."""
    settings = as_dict(cfg.get("reco"), "reco")
    if not settings or not settings.get("enabled", False):
        return None
    settings.pop("enabled")
    ReCoConfig.from_mapping(settings)  # validates names and ranges now, before any data is read
    return settings


def build_datamodule(cfg: DictConfig, weak_view: bool) -> SSLDataModule:
    settings = {k: v for k, v in as_dict(cfg.dataset, "dataset").items() if k not in DATASET_HINT_KEYS}
    reject_unknown_keys("dataset", settings, accepted_arguments(SSLDataModule) - {"weak_view", "seed"})
    return SSLDataModule(**settings, weak_view=weak_view, seed=cfg.seed)


def build_trainer(cfg: DictConfig, output_dir: Path, extra_callbacks: list | None = None) -> L.Trainer:
    settings = as_dict(cfg.trainer, "trainer")
    # The CSV log shares the run directory with Hydra's files and config.yaml; Lightning
    # warns about any non-empty directory, although it only ever replaces its metrics.csv.
    warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
    reject_unknown_keys("trainer", settings, accepted_arguments(L.Trainer))
    loggers: list[Logger] = [CSVLogger(save_dir=str(output_dir), name="", version="")]
    try:
        loggers.append(TensorBoardLogger(save_dir=str(output_dir), name="tensorboard", version=""))
    except ModuleNotFoundError:
        pass  # TensorBoard is optional; the CSV log always exists
    checkpoints = ModelCheckpoint(
        dirpath=str(output_dir / "checkpoints"),
        filename="best-epoch{epoch:03d}-knn{val/knn_acc:.4f}",
        auto_insert_metric_name=False,
        monitor="val/knn_acc",
        mode="max",
        save_last=True,
    )
    callbacks = [checkpoints, LearningRateMonitor(logging_interval="epoch"), *(extra_callbacks or [])]
    return L.Trainer(**settings, logger=loggers, callbacks=callbacks, default_root_dir=str(output_dir))


def build_method(
    cfg: DictConfig, datamodule: SSLDataModule, trainer: L.Trainer, reco: dict[str, Any] | None
) -> SSLMethod:
    name = require_method(cfg)
    method_cls = METHODS[name]
    method_settings = as_dict(cfg.method, "method")
    method_settings.pop("name")
    reject_unknown_keys("method", method_settings, accepted_arguments(method_cls))

    optimizer = as_dict(cfg.optimizer, "optimizer")
    reject_unknown_keys(
        "optimizer", optimizer, {"name", "lr", "weight_decay", "momentum", "warmup_epochs", "classifier_lr"}
    )
    backbone = as_dict(cfg.backbone, "backbone")
    reject_unknown_keys("backbone", backbone, {"name", "width", "small_stem"})
    small_stem = backbone["small_stem"]
    if small_stem == "auto":
        small_stem = datamodule.image_size <= 64
    global_batch = datamodule.batch_size * trainer.world_size * int(cfg.trainer.accumulate_grad_batches)
    for key in ("queue_size",):
        if key in method_settings and method_settings[key] < global_batch:
            raise ConfigError(
                f"method.{key}={method_settings[key]} cannot hold one global batch of {global_batch} keys: "
                f"raise method.{key} (or dataset.queue_size) to at least {global_batch}"
            )
    for key in ("bank_size", "negatives_size"):
        if reco and reco.get(key, global_batch) < global_batch:
            raise ConfigError(
                f"reco.{key}={reco[key]} cannot hold one global batch of {global_batch} keys: "
                f"raise reco.{key} (or dataset.queue_size) to at least {global_batch}"
            )
    return method_cls(
        num_classes=datamodule.num_classes,
        backbone=backbone["name"],
        backbone_width=backbone["width"],
        small_stem=bool(small_stem),
        optimizer=optimizer["name"],
        lr=optimizer["lr"] * global_batch / 256,
        weight_decay=optimizer["weight_decay"],
        sgd_momentum=optimizer["momentum"],
        warmup_epochs=optimizer["warmup_epochs"],
        classifier_lr=optimizer["classifier_lr"],
        knn_k=cfg.knn.k,
        knn_temperature=cfg.knn.temperature,
        reco=reco,
        **method_settings,
    )


def train(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Run one training job described by ``cfg``; returns (and writes) its summary."""
    method_name = require_method(cfg)
    output_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    reco = reco_settings(cfg)
    datamodule = build_datamodule(cfg, weak_view=reco is not None)
    trainer = build_trainer(cfg, output_dir)
    model = build_method(cfg, datamodule, trainer, reco)
    if trainer.is_global_zero:
        (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    initial = trainer.validate(model, datamodule=datamodule, verbose=False)
    knn_at_init = initial[0].get("val/knn_acc") if initial else None
    started = time.time()
    trainer.fit(model, datamodule=datamodule)
    elapsed = time.time() - started

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    checkpoint = trainer.checkpoint_callback
    summary = {
        "method": method_name,
        "reco": reco is not None,
        "dataset": cfg.dataset.name,
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "train_time_s": round(elapsed, 1),
        "knn_acc": metrics.get("val/knn_acc"),
        "linear_acc": metrics.get("val/linear_acc"),
        "knn_acc_random_init": knn_at_init,
        "best_checkpoint": getattr(checkpoint, "best_model_path", None) or None,
        "last_checkpoint": str(output_dir / "checkpoints" / "last.ckpt"),
        "output_dir": str(output_dir),
    }
    if trainer.is_global_zero:
        (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        print(format_summary(summary))
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The final summary as a few aligned lines."""

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.2f}%"

    lines = [
        "",
        f"== reco_lightning: {summary['method']}{' + ReCo' if summary['reco'] else ''} on {summary['dataset']}",
        f"epochs {summary['epochs']}, steps {summary['steps']}, training time {summary['train_time_s']:.1f} s",
        f"kNN accuracy          {pct(summary['knn_acc'])}",
        f"kNN at random init    {pct(summary['knn_acc_random_init'])}",
        f"linear-probe accuracy {pct(summary['linear_acc'])}",
        f"outputs in            {summary['output_dir']}",
    ]
    return "\n".join(lines)
