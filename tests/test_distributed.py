"""DDP on two CPU processes (gloo): queues agree across ranks, SimCLR's gathered
negatives give the single-process loss and gradients, and the CLI's own rank launcher
runs sweeps without stray directories."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reco_lightning.methods import METHODS

from .conftest import TINY

#: each test starts DDP process groups and trains: in `pytest -m slow`
pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("distributed_worker.py")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_two_ranks(*args: str, timeout: float = 300) -> None:
    """Start ranks 0 and 1 of a gloo job running ``distributed_worker.py args``."""
    port = str(free_port())
    procs = []
    for rank in range(2):
        env = dict(
            os.environ,
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            WORLD_SIZE="2",
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            NODE_RANK="0",
            OMP_NUM_THREADS="1",
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKER), *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=timeout)[0])
    finally:
        for proc in procs:
            proc.kill()
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output[-4000:]


@pytest.mark.parametrize(
    ("method", "augment_on"), [(m, "cpu") for m in sorted(METHODS)] + [("moco", "device")]
)
def test_queues_are_identical_on_both_ranks(tmp_path, method, augment_on):
    """With augment_on=device each rank draws the views of its own share on its device."""
    overrides = [
        f"+method={method}",
        "+reco=on",
        "strategy=ddp_cpu",
        *TINY,
        "dataset.batch_size=16",
        f"dataset.augment_on={augment_on}",
    ]
    run_two_ranks("queues", str(tmp_path), *overrides)
    rank0 = torch.load(tmp_path / "queues_rank0.pt")
    rank1 = torch.load(tmp_path / "queues_rank1.pt")
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        assert torch.equal(torch.as_tensor(rank0[name]), torch.as_tensor(rank1[name])), name
    # every step enqueued the keys of both ranks: 3 steps x 2 ranks x 16 images
    assert rank0["relation bank keys enqueued"] == 3 * 2 * 16


def test_knn_monitor_gathers_uneven_shares_once_each(tmp_path):
    """torchmetrics pads, gathers and trims: two ranks with shares of 5/4 bank and 3/2 query
    images give the one-process accuracy, with every query once, in rank order."""
    from reco_lightning.metrics import KNNMonitor

    from .distributed_worker import knn_data

    run_two_ranks("knn", str(tmp_path))
    bank, bank_labels, queries, query_labels = knn_data()
    single = KNNMonitor(num_classes=3, k=3)
    single.update(bank, bank_labels, bank=True)
    single.update(queries, query_labels, bank=False)
    expected = single.compute()
    for rank in range(2):
        got = torch.load(tmp_path / f"knn_rank{rank}.pt")
        assert got["accuracy"] == expected.accuracy
        torch.testing.assert_close(got["query_features"], queries)
        assert torch.equal(got["query_labels"], query_labels)


def test_simclr_two_ranks_match_one_process_on_the_global_batch(tmp_path):
    from .distributed_worker import simclr_batch, simclr_model

    run_two_ranks("simclr-grad", str(tmp_path))
    distributed = torch.load(tmp_path / "simclr_grad.pt")

    model = simclr_model()
    view1, view2 = simclr_batch()
    loss = model.method_step(view1, view2).loss
    loss.backward()
    torch.testing.assert_close(distributed["loss"], loss.detach(), rtol=1e-5, atol=1e-6)
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert distributed["grads"].keys() == grads.keys() and len(grads) > 10
    for name, grad in grads.items():
        torch.testing.assert_close(distributed["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_ddp_sweep_runs_each_job_in_its_directory_and_reports(tmp_path):
    """A two-job sweep with strategy=ddp_cpu: no stray directories, no hang, a report."""
    sweep = tmp_path / "sweep"
    command = [
        sys.executable,
        "-m",
        "reco_lightning",
        "-m",
        "+method=moco,simclr",
        "+reco=on",
        "strategy=ddp_cpu",
        *[o.replace("method.", "++method.", 1) for o in TINY],
        "dataset.batch_size=16",
        f"hydra.sweep.dir={sweep}",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]  # nothing outside the sweep
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1"]
    for job in jobs:
        assert (sweep / job / "summary.json").is_file()
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file()
        assert (sweep / job / ".ddp" / "config.yaml").is_file()  # rank 1 started by our launcher
        assert json.loads((sweep / job / "summary.json").read_text())["steps"] == 3
    # Lightning's own launcher would re-run Hydra in rank 1 (a log named after it, a nested sweep)
    assert not list(sweep.rglob("train_ddp_process_*")), "a rank re-ran Hydra"
    assert [p.name for p in sweep.rglob("multirun.yaml")] == ["multirun.yaml"]

    report = subprocess.run(
        [sys.executable, "-m", "reco_lightning.run.report", str(sweep)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert report.returncode == 0, report.stderr
    assert "+method=moco" in report.stdout and "+method=simclr" in report.stdout
    with open(sweep / "report.csv") as handle:
        assert len(handle.read().strip().splitlines()) == 3  # header + two jobs
    png = sweep / "report.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_report_on_a_directory_without_jobs_is_a_message(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "reco_lightning.run.report", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "no summary.json" in done.stderr
