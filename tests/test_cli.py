"""The command line as a user meets it: a subprocess, from a directory outside the repo."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from reco_lightning.methods import METHODS

from .conftest import run_cli, run_module


def test_missing_method_is_a_message_not_a_traceback(tmp_path):
    result = run_cli(cwd=tmp_path)
    assert result.returncode == 2
    for name in ("barlow", "byol", "moco", "simclr", "simsiam"):
        assert f"+method={name}" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_unknown_method_lists_the_choices(tmp_path):
    result = run_cli("+method=swav", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    choices = ", ".join(f"+method={name}" for name in sorted(METHODS))  # the registry's
    assert result.stderr.strip() == (
        f"reco_lightning: error: +method=swav is unknown: choose one of {choices}"
    )


@pytest.mark.slow
def test_a_trainer_value_lightning_refuses_is_one_line_and_leaves_nothing(tmp_path, tiny):
    result = run_cli("+method=moco", *tiny, "trainer.precision=bogus", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        len(result.stderr.strip().splitlines()) == 1
        and "Precision 'bogus' is invalid" in result.stderr
    )
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_eval_misspelt_key_gets_did_you_mean(tmp_path):
    result = run_module("reco_lightning.eval", "checkpoint=x", "knn.kk=3", cwd=tmp_path)
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == "reco_lightning.eval: error: knn.kk is not a known setting: did you mean knn.k?"
    )


def test_an_error_from_a_loader_worker_reads_as_its_own_message():
    from reco_lightning.errors import ImageLoadError, one_line

    wrapped = ImageLoadError(
        "Caught ImageLoadError in DataLoader worker process 0.\n"
        "Original Traceback (most recent call last):\n"
        '  File "x.py", line 1, in <module>\n'
        "reco_lightning.errors.ImageLoadError: cannot read image a/b.png: bad\n"
    )
    assert one_line(wrapped) == "cannot read image a/b.png: bad"
    assert one_line(ValueError("plain\nmessage")) == "plain message"


@pytest.mark.slow  # a subprocess: 10-30 s on an AVX2 CPU
def test_a_short_run_writes_its_outputs_and_prints_a_summary(tmp_path, tiny):
    result = run_cli("+method=byol", "+reco=on", *tiny, "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "run"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["method"] == "byol" and summary["reco"] is True
    assert "kNN accuracy" in result.stdout and "kNN at random init" in result.stdout
    for name in ("config.yaml", "metrics.csv", "checkpoints/last.ckpt", ".hydra/config.yaml"):
        assert (run_dir / name).is_file(), name


@pytest.mark.slow
def test_eval_command_on_a_short_runs_checkpoint(tmp_path, tiny):
    """Train a few steps, then `python -m reco_lightning.eval checkpoint=...`."""
    run = tmp_path / "run"
    train = subprocess.run(
        [
            sys.executable,
            "-m",
            "reco_lightning",
            "+method=simclr",
            "+reco=on",
            *tiny,
            "pictures=true",
            f"hydra.run.dir={run}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    for picture in ("training_curves.png", "feature_map.png"):
        data = (run / picture).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, picture

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "reco_lightning.eval",
            f"checkpoint={run / 'checkpoints' / 'last.ckpt'}",
            "linear.epochs=5",
            "progress=false",
            "map.max_points=200",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # the run's kNN settings (the digits preset's k=20), as in its summary.json
    assert "kNN (k=20, T=0.1)" in done.stdout and "neighbour purity" in done.stdout
    result = json.loads((run / "eval.json").read_text())
    assert (
        result["dataset"] == "digits" and result["num_val"] == 360
    )  # the run's dataset, all of val
    assert 0 <= result["knn"]["top1"] <= result["knn"]["top5"] <= 1
    assert 0 <= result["linear"]["top1"] <= result["linear"]["top5"] <= 1
    assert result["linear"]["protocol"]["epochs"] == 5
    assert {"purity@10", "purity@50", "cos_gap", "alignment", "uniformity"} <= result[
        "diagnostics"
    ].keys()
    assert result["training_curves"].endswith("training_curves.png")
    data = (run / "eval_feature_map.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the eval wrote nothing elsewhere


@pytest.mark.slow
def test_eval_command_without_a_checkpoint_is_a_message(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "reco_lightning.eval", f"checkpoint={tmp_path / 'x.ckpt'}"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 2 and "no checkpoint at" in done.stderr


def test_help_lists_the_presets_without_importing_lightning():
    """``--help`` reads the groups off the YAML presets: no schema, so no Lightning (8 s of
    imports here) and no torch; the methods it lists are the shipped presets."""
    script = (
        "import runpy, sys\n"
        "sys.argv = ['reco_lightning', '--help']\n"
        "try:\n"
        "    runpy.run_module('reco_lightning', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as done:\n"
        "    assert done.code == 0, done.code\n"
        "heavy = sorted(m for m in ('lightning', 'torch', 'torchvision') if m in sys.modules)\n"
        "print('IMPORTED', heavy)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "IMPORTED []" in done.stdout
    for method in ("byol", "moco", "simclr", "simsiam"):
        assert f"    {method} " in done.stdout
    assert "+reco=" in done.stdout and "imagefolder" in done.stdout


@pytest.mark.slow  # a subprocess: 10-30 s on an AVX2 CPU
def test_a_preset_from_the_users_own_folder_inherits_a_shipped_one(tmp_path):
    """``hydra.searchpath`` adds the user's folder: ``method/moco_long.yaml`` there builds on
    the shipped ``method/moco`` and states only what differs."""
    (tmp_path / "method").mkdir()
    (tmp_path / "method" / "moco_long.yaml").write_text(
        "# @package _global_\ndefaults:\n  - moco\n  - _self_\nmethod:\n  queue_size: 8192\n"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "reco_lightning",
            "+method=moco_long",
            f"hydra.searchpath=[file://{tmp_path}]",
            "--cfg",
            "job",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "name: moco\n" in done.stdout and "queue_size: 8192" in done.stdout
    assert "name: lars" in done.stdout  # the shipped preset's optimizer, inherited
