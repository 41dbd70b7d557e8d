"""Tuned sweeps: the documented Optuna sweep runs trials through the CLI, each returning
its final val/knn_acc, and reports the best trial."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

pytest.importorskip(
    "hydra_plugins.hydra_optuna_sweeper", reason='the Optuna sweeper is not installed (".[tune]")'
)

TINY_RUN = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "backbone.width=8",
    "dataset.batch_size=32",
    "dataset.queue_size=256",
    "pictures=false",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


@pytest.mark.slow
def test_a_three_trial_optuna_sweep_ends_and_reports_the_best(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "reco_lightning",
            "-m",
            "+method=simclr",
            "+reco=on",
            "hydra/sweeper=reco_optuna",
            "hydra.sweeper.n_trials=3",
            "reco.w_local=interval(1.8,1.9)",  # the README's way to narrow one range
            f"hydra.sweep.dir={tmp_path}",
            *TINY_RUN,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    trials = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert trials == ["0", "1", "2"]
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert set(results["best_params"]) == {"reco.w_global", "reco.w_local", "reco.warmup_epochs"}
    # the best value is the best trial's final kNN accuracy, as its summary recorded it
    accuracies = [
        yaml.safe_load((tmp_path / t / "summary.json").read_text())["knn_acc"] for t in trials
    ]
    assert results["best_value"] == pytest.approx(max(accuracies))
    # every trial drew reco.w_local from the command line's range, not the preset's (0, 2):
    # by chance from (0, 2), three draws land there with probability 0.05 ** 3
    for t in trials:
        config = yaml.safe_load((tmp_path / t / ".hydra" / "config.yaml").read_text())
        assert 1.8 <= config["reco"]["w_local"] <= 1.9, (t, config["reco"]["w_local"])
