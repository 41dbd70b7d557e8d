"""A checkpoint from someone else cannot run code: every reader loads with
``weights_only=True`` and refuses, in one line, a pickle that asks for anything but tensors
and plain values, before any of it runs (issue 25)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reco_lightning.checkpoints import read_checkpoint
from reco_lightning.errors import ConfigError


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
