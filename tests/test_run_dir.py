"""One run directory holds one run: nothing of an earlier run is replaced or mixed in, a
resume continues in the run it names, and failed starts leave nothing behind."""

from __future__ import annotations

import hashlib
from pathlib import Path

import lightning as L
import pytest
import torch

from reco_lightning.errors import ConfigError, NonFiniteLossError
from reco_lightning.run.train import train

from .conftest import run_cli

#: each test trains or runs the command line: in `pytest -m slow`
pytestmark = pytest.mark.slow


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and the hash of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """One finished MoCo + ReCo run of 3 steps (shared: the tests below copy or only read it)."""
    from hydra import compose, initialize_config_module

    from tests.conftest import TINY

    run = tmp_path_factory.mktemp("finished") / "run"
    with initialize_config_module(config_module="reco_lightning.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["+method=moco", "+reco=on", *TINY])
    train(cfg, run)
    return run


def test_a_new_run_refuses_a_directory_that_holds_a_run(compose_config, tiny, finished_run):
    before = snapshot(finished_run)
    with pytest.raises(ConfigError, match=r"already holds a run .*resume=auto.*another directory"):
        train(compose_config("+method=moco", "+reco=on", *tiny), finished_run)
    assert snapshot(finished_run) == before


def test_resume_of_a_run_directory_continues_there_with_its_config(
    compose_config, tiny, finished_run, tmp_path
):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    elsewhere = tmp_path / "elsewhere"
    # only what changes is given: no +method, no +reco, no dataset settings
    overrides = ["trainer.max_epochs=2", f"resume={run}"]
    summary = train(compose_config(*overrides), elsewhere, overrides=overrides)
    assert Path(summary["output_dir"]) == run and not elsewhere.exists()
    assert summary["method"] == "moco" and summary["reco"] is True and summary["steps"] == 6
    assert not list(run.glob("checkpoints/last-v*.ckpt"))


@pytest.mark.parametrize(
    "override, named",
    [
        ("+method=simclr", "method.name"),
        ("+reco=off", "reco.enabled"),
        ("dataset=cifar10", "dataset.name"),
    ],
)
def test_resume_refuses_an_override_that_contradicts_the_run(
    compose_config, tiny, finished_run, override, named
):
    before = snapshot(finished_run)
    overrides = [override, f"resume={finished_run}"]
    with pytest.raises(
        ConfigError, match=rf"the run in .* has {named}=.*the command line gives {named}="
    ):
        train(compose_config(*overrides), finished_run.parent / "other", overrides=overrides)
    assert snapshot(finished_run) == before


def test_resume_from_python_with_another_method_is_refused(compose_config, tiny, finished_run):
    with pytest.raises(
        ConfigError, match=r"has method.name=moco, the command line gives method.name=simclr"
    ):
        train(compose_config("+method=simclr", *tiny, f"resume={finished_run}"), finished_run)


def test_truncated_checkpoint_given_to_resume_is_one_line(
    compose_config, tiny, finished_run, tmp_path
):
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes((finished_run / "checkpoints" / "last.ckpt").read_bytes()[:5000])
    with pytest.raises(ConfigError, match="broken.ckpt"):
        train(compose_config("+method=moco", "+reco=on", *tiny, f"resume={broken}"), tmp_path / "x")


def test_unwritable_checkpoint_folder_stops_before_training(compose_config, tiny, tmp_path):
    (tmp_path / "checkpoints").write_text("a file where the checkpoints folder should be")
    with pytest.raises(ConfigError, match=r"cannot write into .*checkpoints"):
        train(compose_config("+method=simclr", *tiny, "resume=auto"), tmp_path)


def test_ddp_without_a_gpu_names_ddp_cpu(compose_config, tiny, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="strategy=ddp_cpu"):
        train(compose_config("+method=simclr", *tiny, "strategy=ddp"), tmp_path)
    assert not (tmp_path / "config.yaml").exists()


class PoisonFirstStep(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        with torch.no_grad():
            next(pl_module.backbone.parameters()).fill_(float("nan"))


def test_non_finite_loss_before_any_checkpoint_promises_none(compose_config, tiny, tmp_path):
    with pytest.raises(NonFiniteLossError, match="no checkpoint had been written yet") as error:
        train(compose_config("+method=simclr", *tiny), tmp_path, callbacks=[PoisonFirstStep()])
    assert "is kept" not in str(error.value)


# ----------------------------------------------------------------------------- the CLI
def test_cli_refuses_a_run_directory_that_holds_a_run_and_changes_nothing(
    tiny, finished_run, tmp_path
):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text("the earlier run's record\n")
    before = snapshot(run)
    result = run_cli("+method=moco", "+reco=on", *tiny, f"hydra.run.dir={run}", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "already holds a run" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert snapshot(run) == before


def test_cli_resume_of_a_run_directory_leaves_no_new_output_directory(finished_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    work = tmp_path / "work"
    work.mkdir()
    result = run_cli(f"resume={run}", "trainer.max_epochs=2", cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"outputs in            {run}" in result.stdout
    assert not (work / "outputs").exists()


def test_cli_failed_start_leaves_no_output_directory(tmp_path):
    result = run_cli("+method=moco", "dataset=imagefolder", cwd=tmp_path)
    assert result.returncode == 2 and "dataset.root must be set" in result.stderr
    assert not (tmp_path / "outputs").exists()


def test_cli_misspelt_key_without_plus_gets_did_you_mean(tmp_path):
    result = run_cli("+method=moco", "trainer.max_epoch=2", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "reco_lightning: error: trainer.max_epoch is not a known setting: "
        "did you mean trainer.max_epochs?"
    )
    assert not (tmp_path / "outputs").exists()


def test_cli_unwritable_run_directory_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = run_cli("+method=moco", f"hydra.run.dir={blocker}/run", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "cannot be written" in result.stderr and len(result.stderr.strip().splitlines()) == 1
