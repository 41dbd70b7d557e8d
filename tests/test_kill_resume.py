"""A run killed at any moment (SIGKILL: no handler runs) and resumed with ``resume=auto``
ends exactly as the uninterrupted run: the same weights, queues, EMA targets and every
logged value once; a half-written file is never taken for a checkpoint.

Ten kills in one chain over a 3-epoch run (each resume is killed again, later): in the
middle of a step, during validation, while a checkpoint is half written, between an epoch's
last step and its boundary checkpoint, right after a resume, and at random moments.
"""

from __future__ import annotations

import csv
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("kill_worker.py")
#: 3 epochs of 4 steps: the epoch boundaries are at global steps 4 and 8
SETTINGS = ["trainer.max_epochs=3", "trainer.limit_train_batches=4"]
#: the kills, in order: each can only happen where the chain has got to. The run writes
#: checkpoints at the epoch boundaries (global steps 4 and 8: the best of the epoch before,
#: then last.ckpt) and at its end (step 12); until step 4 there is none, so the first three
#: kills each start it afresh.
MOMENTS = [
    "on_before_optimizer_step@1",  # in the middle of a step
    "save@4",  # the first checkpoint half written
    "on_validation_batch_end@4",  # during the first epoch's validation
    "on_before_optimizer_step@5",  # past the first boundary (last.ckpt at step 4)
    "on_train_start@4",  # right after a resume
    "on_train_epoch_end@8",  # epoch 2 validated, its boundary checkpoint not yet written
    "save@8",  # the boundary checkpoint half written
    "on_before_optimizer_step@10",  # past the second boundary (last.ckpt at step 8)
    "save@12",  # the final checkpoint half written
]


def run(run_dir: Path, moment: str) -> int:
    command = [sys.executable, str(WORKER), str(run_dir), moment, *SETTINGS]
    return subprocess.run(command, capture_output=True, text=True, timeout=600).returncode


def state(run_dir: Path) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    return {k: v for k, v in checkpoint["state_dict"].items() if isinstance(v, torch.Tensor)}


def logged(run_dir: Path) -> list[tuple[str, str, str, str]]:
    """(epoch, step, name, value) of every logged value but the wall-clock ones."""
    with open(run_dir / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [
        (row["epoch"], row["step"], key, value)
        for row in rows
        for key, value in row.items()
        if value and key not in ("epoch", "step") and not key.startswith("time/")
    ]


def test_kills_at_any_moment_resume_to_the_uninterrupted_run(tmp_path):
    straight = tmp_path / "straight"
    assert run(straight, "none") == 0

    killed = tmp_path / "killed"
    assert [run(killed, moment) for moment in MOMENTS] == [137] * len(MOMENTS)
    # a tenth kill at a moment drawn at random (it may come after the run has ended)
    assert run(killed, f"after@{random.Random(0).uniform(2, 10):.1f}") in (0, 137)
    assert run(killed, "none") == 0

    expected, got = state(straight), state(killed)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)
    assert logged(killed) == logged(straight)
    # the torn files stayed temporary: every *.ckpt loads, no temporary file is left
    folder = killed / "checkpoints"
    assert sorted(p.name for p in folder.iterdir() if not p.name.endswith(".ckpt")) == []
    for path in folder.glob("*.ckpt"):
        torch.load(path, weights_only=True)
