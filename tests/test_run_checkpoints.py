"""The run's checkpoints: ``last.ckpt`` is the last epoch's, the best file the best epoch's,
each written whole or not at all; resuming a finished run, extending it, or changing what
the checkpoint was built with."""

from __future__ import annotations

import csv
import errno
import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from reco_lightning.errors import ConfigError, StorageError
from reco_lightning.export import knn_record
from reco_lightning.run import checkpoints
from reco_lightning.run.checkpoints import AtomicCheckpointIO
from reco_lightning.run.train import train

THREE_EPOCHS = ["trainer.max_epochs=3", "trainer.limit_train_batches=2"]


def test_a_failed_write_keeps_the_previous_checkpoint_and_says_where(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": torch.tensor(1)}, target)

    real_open = open

    class FullDisk:
        def __init__(self, path, mode):
            self.handle = real_open(path, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            self.handle.write(bytes(data)[:10])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints, "open", FullDisk, raising=False)
    with pytest.raises(StorageError) as error:
        io.save_checkpoint({"step": torch.tensor(2)}, target)
    message = str(error.value)
    assert "\n" not in message and "the disk is full" in message and str(tmp_path) in message
    assert "previous checkpoint there is kept" in message
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no torn temporary file
    monkeypatch.undo()
    assert int(torch.load(target, weights_only=True)["step"]) == 1


def rows(run: Path) -> list[tuple[str, str, str]]:
    with open(run / "metrics.csv", newline="") as handle:
        return [
            (row["epoch"], row["step"], key)
            for row in csv.DictReader(handle)
            for key, value in row.items()
            if value and key not in ("epoch", "step")
        ]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, request) -> Path:
    """A 3-epoch MoCo + ReCo run (its kNN need not rise every epoch)."""
    from hydra import compose, initialize_config_module

    from .conftest import TINY

    run = tmp_path_factory.mktemp("finished")
    with initialize_config_module(config_module="reco_lightning.conf", version_base="1.3"):
        cfg = compose(
            config_name="config", overrides=["+method=moco", "+reco=on", *TINY, *THREE_EPOCHS]
        )
    train(cfg, run)
    return run


@pytest.mark.slow
def test_last_is_the_last_epoch_and_best_the_best(finished):
    last = torch.load(finished / "checkpoints" / "last.ckpt", weights_only=True)
    summary = json.loads((finished / "summary.json").read_text())
    assert last["global_step"] == summary["steps"] == 6 and last["epoch"] == 3
    with open(finished / "metrics.csv", newline="") as handle:
        knn = [float(r["val/knn_acc"]) for r in csv.DictReader(handle) if r.get("val/knn_acc")]
    best_epoch = max(range(3), key=lambda e: knn[1 + e])  # knn[0]: the random initialisation
    (best,) = (finished / "checkpoints").glob("best-*.ckpt")
    assert best.name.startswith(f"best-epoch{best_epoch:03d}-knn{knn[1 + best_epoch]:.4f}")
    assert summary["best_checkpoint"] == str(best)
    state = torch.load(best, weights_only=True)
    assert state["global_step"] == 2 * (best_epoch + 1)  # the weights of the epoch it names
    score, source = knn_record(finished, best, state)
    assert score == pytest.approx(knn[1 + best_epoch]) and source is not None


@pytest.mark.slow
def test_a_finished_run_resumed_trains_nothing_and_logs_nothing(
    compose_config, tiny, finished, tmp_path
):
    import shutil

    run = tmp_path / "again"
    shutil.copytree(finished, run)
    before = rows(run)
    summary = train(
        compose_config("+method=moco", "+reco=on", *tiny, *THREE_EPOCHS, "resume=auto"), run
    )
    assert summary["steps"] == 6 and summary["train_time_s"] > 0
    assert rows(run) == before
    extended = train(
        compose_config(
            "+method=moco",
            "+reco=on",
            *tiny,
            "trainer.max_epochs=4",
            "trainer.limit_train_batches=2",
            "resume=auto",
        ),
        run,
    )
    assert extended["steps"] == 8
    logged = rows(run)
    assert [k for k, n in Counter(logged).items() if n > 1] == []  # every row once
    epochs = sorted({e for e, _, key in logged if key == "train/loss_epoch"})
    assert epochs == ["0", "1", "2", "3"]


@pytest.mark.slow
@pytest.mark.parametrize("override", ["backbone.width=16", "dataset.batch_size=16"])
def test_a_resume_that_changes_what_the_checkpoint_was_built_with_is_refused(
    compose_config, tiny, finished, tmp_path, override
):
    import shutil

    run = tmp_path / "changed"
    shutil.copytree(finished, run)
    stored = (run / "config.yaml").read_text()
    cfg = compose_config("+method=moco", "+reco=on", *tiny, *THREE_EPOCHS, "resume=auto", override)
    with pytest.raises(ConfigError, match=rf"{override.split('=')[0]} cannot change") as error:
        train(cfg, run)
    assert "\n" not in str(error.value)
    assert (run / "config.yaml").read_text() == stored  # nothing was written
