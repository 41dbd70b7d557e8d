"""Shared fixtures: composing the package's Hydra config, and the optional CIFAR-10 folder."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

#: the ImageFolder subset of CIFAR-10 that sits beside the project on development machines
CIFAR10_FOLDER = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"

#: overrides that make a run tiny: a few steps of a narrow network on 16 px digits
TINY = [
    "backbone.width=8",
    "dataset.image_size=16",
    "dataset.batch_size=32",
    "dataset.eval_batch_size=128",
    "dataset.queue_size=256",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "method.proj_hidden_dim=64",
    "pictures=false",
]


@pytest.fixture
def tiny() -> list[str]:
    """Overrides for a run of a few steps (see ``TINY``)."""
    return list(TINY)


@pytest.fixture
def compose_config() -> Callable[..., DictConfig]:
    """``compose_config(*overrides)`` composes ``config.yaml`` as the CLI would."""

    def _compose(*overrides: str) -> DictConfig:
        with initialize_config_module(config_module="reco_lightning.conf", version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))

    return _compose


@pytest.fixture
def cifar10_folder() -> Path:
    if not CIFAR10_FOLDER.is_dir():
        pytest.skip(f"the CIFAR-10 image folder {CIFAR10_FOLDER} is absent on this machine")
    return CIFAR10_FOLDER


def run_module(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS`` in ``cwd``, as a user runs it (the command-line tests')."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m reco_lightning ARGS`` in ``cwd``."""
    return run_module("reco_lightning", *args, cwd=cwd)
