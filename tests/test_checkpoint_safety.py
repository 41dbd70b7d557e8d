"""A checkpoint from someone else cannot run code: every reader loads with
``weights_only=True`` and refuses, in one line, a pickle that asks for anything but tensors
and plain values, before any of it runs (issue 25)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from reco_lightning.errors import ConfigError
from reco_lightning.run.checkpoints import read_checkpoint


class Payload:
    """Opening a file for writing when unpickled: the marker shows whether it ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def craft(path: Path, marker: Path) -> Path:
    """A file that looks like a training checkpoint and carries the payload."""
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": Payload(marker)}}, path)
    return path


def test_read_checkpoint_refuses_a_payload_before_it_runs(tmp_path):
    marker = tmp_path / "payload-ran"
    evil = craft(tmp_path / "last.ckpt", marker)
    with pytest.raises(
        ConfigError, match=r"refused: it holds Python objects \((builtins|io)\.open\)"
    ):
        read_checkpoint(evil)
    assert not marker.exists()
    # the same file opened the unsafe way would have run it: the test's payload is real
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_a_real_checkpoint_still_reads(tmp_path):
    torch.save(
        {"state_dict": {"w": torch.ones(2)}, "hyper_parameters": {"lr": 0.1}}, tmp_path / "a.ckpt"
    )
    assert read_checkpoint(tmp_path / "a.ckpt")["hyper_parameters"] == {"lr": 0.1}


def _run(*arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *arguments], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
@pytest.mark.parametrize("command", ["eval", "export", "resume-file", "resume-dir", "resume-auto"])
def test_no_command_runs_a_crafted_checkpoint(tmp_path, command):
    marker = tmp_path / "payload-ran"
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    evil = craft(run / "checkpoints" / "last.ckpt", marker)
    train = ["reco_lightning", "+method=moco", "trainer.max_epochs=1", "pictures=false"]
    arguments = {
        "eval": ["reco_lightning.eval", f"checkpoint={evil}"],
        "export": ["reco_lightning.export", f"checkpoint={evil}", f"output={tmp_path / 'out.pt'}"],
        "resume-file": [*train, f"resume={evil}", f"hydra.run.dir={tmp_path / 'new'}"],
        "resume-dir": [*train, f"resume={run}", f"hydra.run.dir={tmp_path / 'new'}"],
        "resume-auto": [*train, "resume=auto", f"hydra.run.dir={run}"],
    }[command]
    done = _run(*arguments, cwd=tmp_path)
    assert not marker.exists(), "the payload ran"
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "refused: it holds Python objects" in done.stderr and len(done.stderr.splitlines()) == 1


# --------------------------------------------------------------------------- config.yaml is data
@pytest.mark.parametrize(
    "text, named",
    [
        ("optimizer:\n  _target_: builtins.print\n  lr: 0.1\n", "optimizer._target_"),
        ("seed: 0\ncallbacks:\n  - _target_: os.getcwd\n", "callbacks.0._target_"),
        ("method:\n  name: moco\n  _partial_: true\n", "method._partial_"),
    ],
)
def test_a_stored_config_that_names_something_to_build_is_refused(tmp_path, text, named):
    from reco_lightning.run.run_dir import load_stored_config

    (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(ConfigError, match=rf"{named.replace('.', '[.]')} is not a setting"):
        load_stored_config(tmp_path / "config.yaml")


def test_a_malformed_stored_config_is_one_line(tmp_path):
    from reco_lightning.run.run_dir import load_stored_config

    (tmp_path / "config.yaml").write_text("seed: [0\n  method: {")
    with pytest.raises(ConfigError, match="is not a readable run config") as error:
        load_stored_config(tmp_path / "config.yaml")
    assert "\n" not in str(error.value)


def test_the_shipped_logger_targets_still_load(tmp_path):
    from reco_lightning.run.run_dir import load_stored_config

    (tmp_path / "config.yaml").write_text(
        "logger:\n  tensorboard:\n    _target_: lightning.pytorch.loggers.TensorBoardLogger\n"
    )
    stored = load_stored_config(tmp_path / "config.yaml")
    assert stored.logger.tensorboard._target_ == "lightning.pytorch.loggers.TensorBoardLogger"


def test_a_tracker_is_built_from_its_own_class_only(tmp_path):
    from reco_lightning.run.trackers import build_trackers

    with pytest.raises(ConfigError, match=r"logger.tensorboard._target_='builtins.print'"):
        build_trackers(OmegaConf.create({"tensorboard": {"_target_": "builtins.print"}}), tmp_path)
    with pytest.raises(ConfigError, match="remove the other keys that start with _"):
        build_trackers(OmegaConf.create({"tensorboard": {"_args_": ["x"]}}), tmp_path)
    built = build_trackers(OmegaConf.create({"tensorboard": {"name": "tb"}}), tmp_path)
    assert type(built[0]).__name__ == "TensorBoardLogger"  # the preset's class, without _target_


@pytest.mark.slow
@pytest.mark.parametrize(
    "edit",
    [
        lambda text: text.replace("optimizer:\n", "optimizer:\n  _target_: builtins.print\n", 1),
        lambda text: text + "logger:\n  tensorboard:\n    _target_: builtins.print\n",
        lambda text: text[: len(text) // 2] + "\n  - {[\n",
    ],
    ids=["target-in-a-group", "tracker-target", "malformed"],
)
def test_resume_reads_the_run_directorys_config_as_data(tmp_path, edit):
    run = tmp_path / "run"
    first = _run(
        "reco_lightning",
        "+method=moco",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "pictures=false",
        "backbone.width=8",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    assert first.returncode == 0, first.stderr[-2000:]
    config = run / "config.yaml"
    config.write_text(edit(config.read_text()))
    before = config.read_text()
    done = _run(
        "reco_lightning",
        "+method=moco",
        f"resume={run}",
        "trainer.max_epochs=2",
        f"hydra.run.dir={tmp_path / 'new'}",
        cwd=tmp_path,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert len(done.stderr.splitlines()) == 1
    assert config.read_text() == before  # nothing rewrote it
