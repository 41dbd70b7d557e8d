"""The ``logger`` group: TensorBoard, W&B (offline) and MLflow (file store) beside the CSV
log, the run's config and summary logged to each, and a missing extra as one line."""

from __future__ import annotations

import importlib.util

import pytest
from omegaconf import OmegaConf

from reco_lightning.errors import ConfigError
from reco_lightning.run import trackers as trackers_module
from reco_lightning.run.trackers import build_trackers
from reco_lightning.run.train import train


def test_the_default_is_the_csv_log_alone(compose_config, tmp_path):
    cfg = compose_config("+method=moco")
    assert build_trackers(cfg.logger, tmp_path) == []


def test_several_trackers_compose_into_one_group(compose_config):
    cfg = compose_config("+method=moco", "logger=[csv,tensorboard,mlflow]")
    assert sorted(cfg.logger) == ["mlflow", "tensorboard"]
    assert cfg.logger.tensorboard._target_.endswith("TensorBoardLogger")


@pytest.mark.parametrize(
    "name, extra", [("tensorboard", "tensorboard"), ("wandb", "wandb"), ("mlflow", "mlflow")]
)
def test_a_tracker_that_is_not_installed_names_its_extra(
    compose_config, tmp_path, monkeypatch, name, extra
):
    real = importlib.util.find_spec
    hidden = set(trackers_module.TRACKERS[name][0])
    monkeypatch.setattr(
        trackers_module.importlib.util,
        "find_spec",
        lambda module, *args: None if module in hidden else real(module, *args),
    )
    cfg = compose_config("+method=moco", f"logger=[csv,{name}]")
    with pytest.raises(ConfigError, match=rf'pip install "reco_lightning\[{extra}\]"') as info:
        build_trackers(cfg.logger, tmp_path)
    assert "\n" not in str(info.value)


def test_an_unknown_tracker_node_is_named(tmp_path):
    with pytest.raises(ConfigError, match="logger.neptune"):
        build_trackers(OmegaConf.create({"neptune": {"_target_": "x"}}), tmp_path)


@pytest.mark.slow
def test_every_tracker_receives_metrics_config_and_summary(compose_config, tiny, tmp_path):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    cfg = compose_config(
        "+method=simclr", "+reco=on", *tiny, "logger=[csv,tensorboard,wandb,mlflow]"
    )
    summary = train(cfg, tmp_path)

    # TensorBoard: event files holding the training loss and the summary
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss_method_epoch", "val/knn_acc", "summary/knn_acc"} <= scalars

    # MLflow: the local store in the run directory holds metrics and the config as params
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "reco_lightning"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.metrics["summary/knn_acc"] == pytest.approx(summary["knn_acc"])
    assert "val/knn_acc" in run.data.metrics
    assert run.data.params["config/method/name"] == "simclr"
    assert run.data.params["config/reco/enabled"] == "True"

    # W&B, offline: a run directory with its history, nothing sent anywhere
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))

    # and the CSV log is still there
    assert (tmp_path / "metrics.csv").is_file()
