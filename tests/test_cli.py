"""The command line as a user meets it: a subprocess, from a directory outside the repo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "reco_lightning", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_missing_method_is_a_message_not_a_traceback(tmp_path):
    result = run_cli(cwd=tmp_path)
    assert result.returncode == 2
    assert "+method=moco, +method=simclr, +method=byol" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_method_lists_the_choices(tmp_path):
    result = run_cli("+method=swav", cwd=tmp_path)
    assert result.returncode != 0
    assert "Available options" in result.stderr and "moco" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_short_run_writes_its_outputs_and_prints_a_summary(tmp_path, tiny):
    result = run_cli("+method=byol", "+reco=on", *tiny, "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "run"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["method"] == "byol" and summary["reco"] is True
    assert "kNN accuracy" in result.stdout and "kNN at random init" in result.stdout
    for name in ("config.yaml", "metrics.csv", "checkpoints/last.ckpt", ".hydra/config.yaml"):
        assert (run_dir / name).is_file(), name
