"""Experiment trackers of the ``logger`` config group: TensorBoard, W&B, MLflow.

Each tracker is a Lightning logger built from its config node with ``hydra.utils.instantiate``
(``_target_`` names the class), beside the CSV log that every run writes. A tracker whose
package is not installed stops the run before training with one line naming its extra.

>>> from omegaconf import OmegaConf
>>> build_trackers(OmegaConf.create({}), "/tmp/run")   # logger=csv: no tracker beside the CSV log
[]
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError
from .config_checks import as_dict

#: tracker -> (the modules that provide it, any of them; the pip extra that installs one)
TRACKERS: dict[str, tuple[tuple[str, ...], str]] = {
    "tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"),
    "wandb": (("wandb",), "wandb"),
    "mlflow": (("mlflow",), "mlflow"),
}
#: the class each tracker is: the only ``_target_`` its node may name (a config from a run
#: directory or a command line cannot make ``instantiate`` build anything else)
TRACKER_CLASSES = {
    "tensorboard": "lightning.pytorch.loggers.TensorBoardLogger",
    "wandb": "lightning.pytorch.loggers.WandbLogger",
    "mlflow": "lightning.pytorch.loggers.MLFlowLogger",
}


def _run_settings(name: str, settings: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    """Where a tracker writes, inside the run directory unless the user said otherwise."""
    if name == "mlflow":  # a local store (MLflow 3 retires its plain-file store): SQLite
        if not settings.get("tracking_uri"):
            settings["tracking_uri"] = f"sqlite:///{(output_dir / 'mlflow.db').resolve()}"
        if not settings.get("artifact_location"):
            settings["artifact_location"] = (output_dir / "mlartifacts").resolve().as_uri()
    else:
        settings.setdefault("save_dir", str(output_dir))
    return settings


def build_trackers(
    loggers: DictConfig | Mapping[str, Any] | None, output_dir: str | Path
) -> list[Logger]:
    """The trackers chosen in ``cfg.logger`` (one node per tracker), built and checked."""
    from hydra.utils import instantiate

    trackers: list[Logger] = []
    for name, node in (loggers or {}).items():
        if name not in TRACKERS:
            raise ConfigError(
                f"logger.{name} is not a tracker this package knows: choose from {sorted(TRACKERS)}"
            )
        modules, extra = TRACKERS[name]
        if all(importlib.util.find_spec(module) is None for module in modules):
            raise ConfigError(
                f"logger={name} needs the {modules[0]} package: pip install "
                f'"reco_lightning[{extra}]"'
            )
        settings = _run_settings(name, as_dict(node, f"logger.{name}"), Path(output_dir))
        target = settings.setdefault("_target_", TRACKER_CLASSES[name])
        if target != TRACKER_CLASSES[name] or any(
            key.startswith("_") for key in settings if key != "_target_"
        ):
            raise ConfigError(
                f"logger.{name}._target_={target!r}: a tracker is built from its own class "
                f"({TRACKER_CLASSES[name]}), with settings only; remove the other keys that "
                "start with _"
            )
        try:
            trackers.append(instantiate(settings, _recursive_=False))
        except Exception as error:  # noqa: BLE001 - the tracker's own message, on one line
            reason = " ".join(str(error).split())
            raise ConfigError(
                f"logger={name} could not start: {reason} (see logger.{name}.* )"
            ) from None
    return trackers


def log_config(trackers: list[Logger], cfg: DictConfig) -> None:
    """The run's resolved config, as hyperparameters of every tracker."""
    if trackers:
        config = OmegaConf.to_container(cfg, resolve=True)
        for tracker in trackers:
            tracker.log_hyperparams({"config": config})


def log_summary(trackers: list[Logger], summary: Mapping[str, Any], step: int) -> None:
    """The run's numeric summary (kNN accuracy, training time, ...) as ``summary/*`` metrics."""
    numbers = {
        f"summary/{key}": float(value)
        for key, value in summary.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }
    for tracker in trackers:
        tracker.log_metrics(numbers, step=step)
        tracker.save()
