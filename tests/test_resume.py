"""Long runs are safe: a signal leaves a checkpoint, resume continues exactly, and a
non-finite loss stops the run without touching the last good checkpoint."""

from __future__ import annotations

import csv
import hashlib
import math
import os
import signal
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch

from reco_lightning.errors import ConfigError, NonFiniteLossError
from reco_lightning.methods import METHODS
from reco_lightning.run.train import train

#: each test trains, interrupts and resumes whole runs: in `pytest -m slow`
pytestmark = pytest.mark.slow

#: two epochs of four steps: step 5 lies in the middle of the second epoch
TWO_EPOCHS = ["trainer.max_epochs=2", "trainer.limit_train_batches=4"]


class SignalAfterStep(L.Callback):
    """Sends this process ``signum`` once the run has done ``step`` optimizer steps."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def queues(checkpoint: Path) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    return {
        name: value
        for name, value in state.items()
        if name.endswith(("features", "pointer", "num_enqueued"))
    }


@pytest.mark.parametrize(
    ("signum", "augment_on", "method"),
    [
        (signal.SIGTERM, "cpu", "moco"),
        (signal.SIGTERM, "device", "moco"),
        (signal.SIGINT, "cpu", "moco"),
        (signal.SIGTERM, "cpu", "simclr"),
    ],
)
def test_signal_mid_epoch_then_resume_matches_an_uninterrupted_run(
    compose_config, tiny, tmp_path, signum, augment_on, method
):
    """MoCo: its queue lent to ReCo; SimCLR: ReCo's own negatives and EMA teacher."""
    overrides = [
        f"+method={method}",
        "+reco=on",
        *tiny,
        *TWO_EPOCHS,
        f"dataset.augment_on={augment_on}",
    ]
    straight = train(compose_config(*overrides), tmp_path / "straight")

    interrupted = tmp_path / "interrupted"
    with pytest.raises(SystemExit) as stop:
        train(compose_config(*overrides), interrupted, callbacks=[SignalAfterStep(5, signum)])
    assert stop.value.code == 128 + signum
    saved = torch.load(
        interrupted / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    assert (
        saved["global_step"] == 5 and saved["epoch"] == 1
    )  # mid-epoch, after the step in progress

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = train(compose_config(*overrides, "resume=auto"), interrupted)
    # the data module restarts the epoch where it stopped: Lightning must not say otherwise
    assert not [w for w in caught if "not resumable" in str(w.message)]
    assert resumed["steps"] == straight["steps"] == 8
    assert resumed["knn_acc_random_init"] == straight["knn_acc_random_init"]
    expected = queues(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    got = queues(interrupted / "checkpoints" / "last.ckpt")
    assert (
        expected.keys() == got.keys() and len(expected) == 6
    )  # MoCo's queue or ReCo's negatives, and the bank
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-5, msg=name)
    if method == "simclr":  # ReCo's own teacher moved exactly as in the straight run
        teacher = {
            k: v for k, v in weights(tmp_path / "straight").items() if k.startswith("reco.teacher.")
        }
        resumed_teacher = {
            k: v for k, v in weights(interrupted).items() if k.startswith("reco.teacher.")
        }
        assert teacher and teacher.keys() == resumed_teacher.keys()
        for name in teacher:
            torch.testing.assert_close(
                resumed_teacher[name], teacher[name], rtol=0, atol=1e-5, msg=name
            )
    # metrics.csv holds the whole history once: the random-init point and every epoch
    assert logged_entries(interrupted) == logged_entries(tmp_path / "straight")
    knn_epochs = [row["epoch"] for row in csv_rows(interrupted) if row.get("val/knn_acc")]
    assert knn_epochs == ["0", "0", "1"]  # random init (epoch 0, step 0), then epochs 0 and 1


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)[
        "state_dict"
    ]


def csv_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def logged_entries(run: Path) -> list[tuple[str, str, str]]:
    """(epoch, step, metric) of every value in metrics.csv, in order: what was logged where."""
    return [
        (row["epoch"], row["step"], key)
        for row in csv_rows(run)
        for key, value in row.items()
        if value and key not in ("epoch", "step")
    ]


def test_resume_from_an_explicit_path_and_bad_paths(compose_config, tiny, tmp_path):
    first = train(compose_config("+method=simclr", *tiny), tmp_path / "a")
    assert first["steps"] == 3
    more = train(
        compose_config("+method=simclr", *tiny, "trainer.max_epochs=2", f"resume={tmp_path / 'a'}"),
        tmp_path / "b",
    )
    assert more["steps"] == 6  # continued from step 3, not from scratch
    with pytest.raises(ConfigError, match="resume=.*no checkpoint"):
        train(
            compose_config("+method=simclr", *tiny, f"resume={tmp_path / 'nowhere.ckpt'}"),
            tmp_path / "c",
        )


def test_resume_auto_without_a_checkpoint_starts_afresh(compose_config, tiny, tmp_path):
    assert train(compose_config("+method=simclr", *tiny, "resume=auto"), tmp_path)["steps"] == 3


class PoisonWeightsAtStep(L.Callback):
    """Sets one backbone weight to NaN before step ``step``; remembers last.ckpt's hash then."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.hash_before: str | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            last = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
            self.hash_before = hashlib.sha256(last.read_bytes()).hexdigest()
            with torch.no_grad():
                next(pl_module.backbone.parameters()).fill_(float("nan"))


def test_non_finite_loss_names_step_and_term_and_keeps_the_checkpoint(
    compose_config, tiny, tmp_path
):
    poison = PoisonWeightsAtStep(5)
    with pytest.raises(NonFiniteLossError, match=r"global step 5 .*train/loss_method = nan"):
        train(
            compose_config("+method=moco", "+reco=on", *tiny, *TWO_EPOCHS),
            tmp_path,
            callbacks=[poison],
        )
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert poison.hash_before == hashlib.sha256(last.read_bytes()).hexdigest()
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 4


@pytest.mark.parametrize("method", sorted(METHODS))
def test_bf16_mixed_on_cpu_with_reco(compose_config, tiny, tmp_path, method):
    cfg = compose_config(f"+method={method}", "+reco=on", *tiny, "trainer.precision=bf16-mixed")
    summary = train(cfg, tmp_path)
    assert summary["steps"] == 3
    assert math.isfinite(summary["knn_acc"])
    state = torch.load(
        tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )["state_dict"]
    assert state["reco.bank.num_enqueued"] == 3 * 32
    assert all(
        torch.isfinite(v).all()
        for v in state.values()
        if isinstance(v, torch.Tensor) and v.is_floating_point()
    )


class BarAtFirstBatch(L.Callback):
    """What the progress bar and the training clock show once the resumed run is under way."""

    def __init__(self) -> None:
        self.description: str | None = None
        self.total: int | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.description is None:
            bar = trainer.progress_bar_callback.train_progress_bar
            self.description, self.total = bar.desc, bar.total


def test_first_epoch_after_a_mid_epoch_resume_shows_its_number_and_counts_its_time(
    compose_config, tiny, tmp_path
):
    overrides = ["+method=simclr", *tiny, *TWO_EPOCHS]
    with pytest.raises(SystemExit):
        train(compose_config(*overrides), tmp_path, callbacks=[SignalAfterStep(5, signal.SIGTERM)])
    seen = BarAtFirstBatch()
    train(
        compose_config(*overrides, "resume=auto", "trainer.enable_progress_bar=true"),
        tmp_path,
        callbacks=[seen],
    )
    assert (
        seen.description.startswith("Epoch 1") and seen.total == 4
    )  # not "Training", total unknown
    seconds = [float(row["time/train_s"]) for row in csv_rows(tmp_path) if row.get("time/train_s")]
    assert len(seconds) == 2 and seconds[1] > seconds[0]  # the resumed epoch's steps are timed too
