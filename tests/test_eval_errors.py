"""Runs a user can trust: ``eval`` uses the run's kNN settings, evaluates small folders, and
turns unreadable or mismatched checkpoints into one-line messages instead of tracebacks.

Two tiny runs (MoCo with ReCo on, SimCLR with ReCo off, on digits whose preset sets
``knn.k=20``) are trained once for the module.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from reco_lightning.errors import ConfigError
from reco_lightning.methods import BYOL, MoCo, SimCLR
from reco_lightning.run.checkpoints import METHOD_KEY, read_checkpoint
from reco_lightning.run.evaluate import DEFAULT_KNN, evaluate, knn_settings

from .conftest import TINY, run_module

#: a quick evaluation: no linear classifier, no feature map, no alignment views
QUICK = [
    "linear.enabled=false",
    "map.enabled=false",
    "progress=false",
    "diagnostics.alignment_images=0",
]


def _train(out_dir: Path, *overrides: str) -> Path:
    from reco_lightning.run.train import train

    with initialize_config_module(config_module="reco_lightning.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*overrides, *TINY])
    train(cfg, out_dir)
    return out_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{"moco_on": RUN, "simclr_off": RUN}``: tiny digits runs with their checkpoints."""
    root = tmp_path_factory.mktemp("eval_errors")
    return {
        "moco_on": _train(root / "moco_on", "+method=moco", "+reco=on"),
        "simclr_off": _train(root / "simclr_off", "+method=simclr"),
    }


def eval_config(*overrides: str) -> DictConfig:
    """``conf/eval.yaml`` composed as ``python -m reco_lightning.eval`` would."""
    with initialize_config_module(config_module="reco_lightning.conf", version_base="1.3"):
        return compose(config_name="eval", overrides=list(overrides))


def assert_one_line_error(done: subprocess.CompletedProcess, *phrases: str) -> str:
    """Exit code 2, no traceback, and exactly one stderr line holding the error."""
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    errors = [
        line for line in done.stderr.splitlines() if line.startswith("reco_lightning.eval: error:")
    ]
    assert len(errors) == 1, done.stderr
    for phrase in phrases:
        assert phrase in errors[0], errors[0]
    return errors[0]


def truncated_copy(checkpoint: Path, destination: Path, keep: float = 0.5) -> Path:
    """What an interrupted copy leaves: the first part of the file."""
    data = checkpoint.read_bytes()
    destination.write_bytes(data[: int(len(data) * keep)])
    return destination


# -- 9: the run's kNN settings ---------------------------------------------------------------
@pytest.mark.slow
def test_eval_uses_the_runs_knn_settings(runs, tmp_path):
    run = runs["simclr_off"]
    assert (
        OmegaConf.load(run / "config.yaml").knn.k == 20
    )  # the digits preset's, not config.yaml's 200
    result = evaluate(eval_config(f"checkpoint={run}", f"output_dir={tmp_path}", *QUICK))
    assert (result["knn"]["k"], result["knn"]["temperature"]) == (20, 0.1)
    assert result["knn"]["settings_from"] == {
        "k": "the run's config.yaml",
        "temperature": "the run's config.yaml",
    }
    written = json.loads((tmp_path / "eval.json").read_text())
    assert (
        written["knn"]["k"] == 20
        and written["knn"]["settings_from"]["k"] == "the run's config.yaml"
    )


@pytest.mark.slow
def test_eval_knn_settings_on_the_command_line_win(runs, tmp_path):
    run = runs["simclr_off"]
    result = evaluate(eval_config(f"checkpoint={run}", f"output_dir={tmp_path}", "knn.k=7", *QUICK))
    assert (result["knn"]["k"], result["knn"]["temperature"]) == (7, 0.1)
    assert result["knn"]["settings_from"] == {
        "k": "the command line",
        "temperature": "the run's config.yaml",
    }


def test_knn_settings_fall_back_to_the_checkpoint_then_the_default():
    cfg = eval_config("checkpoint=x.ckpt")
    assert cfg.knn.k is None and cfg.knn.temperature is None  # null: the run's value
    values, sources = knn_settings(cfg, None, {"knn_k": 30, "knn_temperature": 0.2})
    assert values == {"k": 30, "temperature": 0.2}
    assert set(sources.values()) == {"the checkpoint's hyperparameters"}
    values, sources = knn_settings(cfg, None, {})
    assert values == DEFAULT_KNN and set(sources.values()) == {"the default"}
    with pytest.raises(ConfigError, match=r"knn\.k=0"):
        knn_settings(eval_config("checkpoint=x.ckpt", "knn.k=0"), None, {})


# -- 10: a folder smaller than the training batch ------------------------------------------
@pytest.mark.slow
def test_eval_on_a_folder_smaller_than_the_training_batch(runs, tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for split in ("train", "val"):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for index in range(3):
                Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
                    folder / f"{index}.png"
                )
    cfg = eval_config(
        f"checkpoint={runs['simclr_off']}",
        "dataset=imagefolder",
        f"dataset.root={root}",
        "dataset.num_workers=0",
        f"output_dir={tmp_path / 'out'}",
        *QUICK,
    )
    assert cfg.dataset.batch_size > 6  # the imagefolder preset's training batch: 256
    result = evaluate(cfg)
    assert result["num_train"] == 6 and result["num_val"] == 6
    assert 0 <= result["knn"]["top1"] <= 1


# -- 11: truncated or corrupt checkpoints -----------------------------------------------------
@pytest.mark.slow
def test_read_checkpoint_reads_a_training_checkpoint(runs):
    state = read_checkpoint(runs["moco_on"] / "checkpoints" / "last.ckpt")
    assert {"state_dict", "hyper_parameters"} <= state.keys()
    assert state[METHOD_KEY] == "moco"  # recorded by SSLMethod.on_save_checkpoint


@pytest.mark.slow
@pytest.mark.parametrize("keep", [0.5, 0.99, 0.001, 0.0])
def test_read_checkpoint_names_a_truncated_file(runs, tmp_path, keep):
    bad = truncated_copy(
        runs["moco_on"] / "checkpoints" / "last.ckpt", tmp_path / "last.ckpt", keep
    )
    with pytest.raises(ConfigError) as caught:
        read_checkpoint(bad)
    message = str(caught.value)
    assert str(bad) in message and "not a readable checkpoint" in message and "truncated" in message
    assert "\n" not in message


@pytest.mark.slow
def test_read_checkpoint_suggests_a_best_checkpoint_beside_it(runs, tmp_path):
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    truncated_copy(runs["moco_on"] / "checkpoints" / "last.ckpt", checkpoints / "last.ckpt")
    (checkpoints / "best-epoch003-knn0.5000.ckpt").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"e\.g\. best-epoch003-knn0\.5000\.ckpt beside it"):
        read_checkpoint(checkpoints / "last.ckpt")


@pytest.mark.parametrize(
    "content, phrase",
    [
        (b"not a checkpoint at all\n", "not a readable checkpoint"),
        (torch.zeros(2), "holds a Tensor, not a reco_lightning training checkpoint"),
        ({"weights": 1}, "without 'state_dict' and 'hyper_parameters'"),
    ],
)
def test_read_checkpoint_rejects_other_files(tmp_path, content, phrase):
    path = tmp_path / "other.ckpt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(ConfigError, match=phrase) as caught:
        read_checkpoint(path)
    assert str(path) in str(caught.value)


@pytest.mark.slow
def test_eval_command_on_a_truncated_checkpoint_is_one_line(runs, tmp_path):
    bad = truncated_copy(runs["moco_on"] / "checkpoints" / "last.ckpt", tmp_path / "copied.ckpt")
    done = run_module("reco_lightning.eval", f"checkpoint={bad}", cwd=tmp_path)
    assert_one_line_error(done, str(bad), "not a readable checkpoint", "truncated")


# -- 12: no checkpoint= -----------------------------------------------------------------------
@pytest.mark.slow  # a subprocess: 10-30 s on an AVX2 CPU
def test_eval_command_without_checkpoint_is_one_line(tmp_path):
    done = run_module("reco_lightning.eval", cwd=tmp_path)
    assert_one_line_error(done, "checkpoint is not set", "checkpoint=")


# -- 13: another method's checkpoint, or the other ReCo setting -------------------------------
@pytest.mark.slow
def test_load_from_checkpoint_of_another_method_is_a_config_error(runs):
    moco_on = runs["moco_on"] / "checkpoints" / "last.ckpt"
    for cls in (SimCLR, BYOL):  # fails while building the module: MoCo's queue_size
        with pytest.raises(ConfigError) as caught:
            cls.load_from_checkpoint(moco_on)
        message = str(caught.value)
        assert str(moco_on) in message and "MoCo with ReCo on (+method=moco +reco=on)" in message
        assert f"loaded into {cls.__name__}" in message and "\n" not in message
    simclr_off = runs["simclr_off"] / "checkpoints" / "last.ckpt"
    with pytest.raises(
        ConfigError, match=r"holds SimCLR with ReCo off .* loaded into MoCo with ReCo off"
    ):
        MoCo.load_from_checkpoint(simclr_off)  # builds, then on_load_checkpoint refuses


@pytest.mark.slow
def test_load_from_checkpoint_with_the_other_reco_setting_is_a_config_error(runs):
    with pytest.raises(
        ConfigError, match=r"holds MoCo with ReCo on .* loaded into MoCo with ReCo off"
    ):
        MoCo.load_from_checkpoint(runs["moco_on"] / "checkpoints" / "last.ckpt", reco=None)
    with pytest.raises(
        ConfigError, match=r"holds SimCLR with ReCo off .* loaded into SimCLR with ReCo on"
    ):
        SimCLR.load_from_checkpoint(
            runs["simclr_off"] / "checkpoints" / "last.ckpt",
            reco={"bank_size": 256, "negatives_size": 256},
        )


@pytest.mark.slow
def test_load_from_checkpoint_of_the_same_method_still_loads(runs):
    model = MoCo.load_from_checkpoint(runs["moco_on"] / "checkpoints" / "last.ckpt")
    assert model.reco_enabled
    assert not SimCLR.load_from_checkpoint(
        runs["simclr_off"] / "checkpoints" / "last.ckpt"
    ).reco_enabled


@pytest.mark.slow
def test_a_checkpoint_without_the_method_record_loads_into_its_method(runs, tmp_path):
    """Without the record (not written by this package's methods) the method check is
    skipped, not guessed from the hyperparameters; the ReCo check still applies."""
    state = torch.load(
        runs["simclr_off"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    del state[METHOD_KEY]
    old = tmp_path / "old.ckpt"
    torch.save(state, old)
    assert not SimCLR.load_from_checkpoint(old).reco_enabled


@pytest.mark.slow
def test_a_trainer_resuming_with_the_other_reco_setting_is_a_config_error(runs, tmp_path):
    """The Trainer's ``ckpt_path`` restore goes through ``on_load_checkpoint`` too (train.py
    checks the run's settings itself first; this is the module's own guard)."""
    import lightning as L

    from reco_lightning.data import SSLDataModule

    checkpoint = runs["moco_on"] / "checkpoints" / "last.ckpt"
    hparams = {**read_checkpoint(checkpoint)["hyper_parameters"], "reco": None}
    model = MoCo(**hparams)
    datamodule = SSLDataModule(name="digits", image_size=16, batch_size=32, eval_batch_size=128)
    trainer = L.Trainer(
        max_epochs=2,
        limit_train_batches=1,
        limit_val_batches=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        default_root_dir=tmp_path,
    )
    with pytest.raises(
        ConfigError, match=r"holds MoCo with ReCo on .* loaded into MoCo with ReCo off"
    ):
        trainer.fit(model, datamodule=datamodule, ckpt_path=str(checkpoint))


@pytest.mark.slow
def test_eval_on_cuda_without_a_gpu_is_one_line(runs, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    done = run_module(
        "reco_lightning.eval", f"checkpoint={runs['moco_on']}", "device=cuda", cwd=tmp_path
    )
    assert_one_line_error(done, "device=cuda", "no CUDA GPU")
