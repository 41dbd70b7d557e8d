"""A sweep survives a failing job: the job leaves ``failed.json``, the other jobs run to the
end, the sweep exits with status 2, and the report lists the failure beside the finished."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from reco_lightning.errors import NonFiniteLossError
from reco_lightning.run.report import collect, markdown, write_report
from reco_lightning.run.sweep import FAILED_FILE, FailedJobs, failed_jobs, record_failure
from tests.conftest import TINY

ERROR = "the loss became non-finite at global step 1: lower optimizer.lr"


def finished_job(job_dir: Path, overrides: list[str], knn: float = 0.5) -> None:
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    summary = {"method": "moco", "reco": False, "dataset": "digits", "epochs": 1, "steps": 3}
    summary |= {"knn_acc": knn, "linear_acc": 0.2, "knn_acc_random_init": 0.4}
    (job_dir / "summary.json").write_text(json.dumps(summary | {"train_time_s": 1.0}))


def failed_job(job_dir: Path, overrides: list[str]) -> None:
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    record_failure(job_dir, NonFiniteLossError(ERROR), overrides, job=int(job_dir.name))


def test_a_failed_job_records_its_line_class_and_overrides(tmp_path):
    line = record_failure(tmp_path, NonFiniteLossError(f"{ERROR}\n  (more)"), ["a=1"], job=3)
    assert line == f"{ERROR} (more)"
    record = json.loads((tmp_path / FAILED_FILE).read_text())
    assert record == {"job": 3, "error": line, "type": "NonFiniteLossError", "overrides": ["a=1"]}
    assert failed_jobs(tmp_path.parent) == [tmp_path]


def test_the_report_lists_failed_jobs_beside_the_finished_ones(tmp_path):
    finished_job(tmp_path / "1", ["+method=moco", "optimizer.lr=0.03"])
    failed_job(tmp_path / "0", ["+method=moco", "optimizer.lr=1e30"])
    finished_job(tmp_path / "10", ["+method=moco", "optimizer.lr=0.1"])
    rows = collect(tmp_path)
    assert [(r["job"], r["status"]) for r in rows] == [
        ("0", "failed"),
        ("1", "finished"),
        ("10", "finished"),
    ]
    assert rows[0]["error"] == ERROR and rows[0]["overrides"] == "+method=moco optimizer.lr=1e30"
    table = markdown(rows)
    assert "| error |" in table and f"failed: {ERROR}" in table
    assert "`optimizer.lr=1e30`" in table and "1 of 3 jobs failed" in table
    write_report(tmp_path)
    with open(tmp_path / "report.csv") as handle:
        written = list(csv.DictReader(handle))
    assert [(r["job"], r["status"], r["error"]) for r in written] == [
        ("0", "failed", ERROR),
        ("1", "finished", ""),
        ("10", "finished", ""),
    ]
    assert "1 of 3 jobs failed" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "report.png").is_file()


def test_a_report_of_finished_jobs_only_has_no_error_column(tmp_path):
    finished_job(tmp_path / "0", ["+method=moco"])
    assert "error" not in markdown(collect(tmp_path)) and "failed" not in markdown(
        collect(tmp_path)
    )


def test_a_report_of_failed_jobs_only_is_written_without_a_plot(tmp_path):
    failed_job(tmp_path / "0", ["+method=moco", "optimizer.lr=1e30"])
    rows = write_report(tmp_path)
    assert len(rows) == 1 and "1 of 1 jobs failed" in (tmp_path / "report.md").read_text()
    assert not (tmp_path / "report.png").exists()


def test_the_sweep_ends_with_status_2_when_a_job_failed(tmp_path, capsys):
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    finished_job(tmp_path / "0", ["+method=moco"])
    FailedJobs().on_multirun_end(config=config)  # nothing failed: nothing said
    assert capsys.readouterr().err == ""
    failed_job(tmp_path / "1", ["+method=moco", "optimizer.lr=1e30"])
    with pytest.raises(SystemExit) as ended:
        FailedJobs().on_multirun_end(config=config)
    assert ended.value.code == 2
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and said[0].startswith("reco_lightning: error: 1 job(s) of the sweep")
    assert f"python -m reco_lightning.run.report {tmp_path}" in said[0]


@pytest.mark.slow
def test_a_sweep_with_a_diverging_job_runs_the_other_and_reports_both(tmp_path):
    sweep = tmp_path / "sweep"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "reco_lightning",
            "-m",
            "+method=moco",
            "optimizer.lr=1e30,0.03",  # job 0 diverges at its first step
            *[o.replace("method.", "++method.", 1) for o in TINY],
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    ours = [line for line in done.stderr.splitlines() if line.startswith("reco_lightning:")]
    assert len(ours) == 2, done.stderr[-3000:]
    assert ours[0].startswith("reco_lightning: error: job 0: the loss became non-finite")
    assert ours[1].startswith("reco_lightning: error: 1 job(s) of the sweep failed (0 in ")
    record = json.loads((sweep / "0" / FAILED_FILE).read_text())
    assert record["type"] == "NonFiniteLossError" and "optimizer.lr=1e+30" in record["overrides"]
    assert (sweep / "1" / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((sweep / "1" / "summary.json").read_text())["steps"] == 3
    assert not (sweep / "1" / FAILED_FILE).exists()

    report = subprocess.run(
        [sys.executable, "-m", "reco_lightning.run.report", str(sweep)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert report.returncode == 0, report.stderr
    rows = [line for line in report.stdout.splitlines() if line.startswith("| 0 ")]
    assert len(rows) == 1 and "optimizer.lr=1e+30" in rows[0]
    assert "failed: the loss became non-finite" in rows[0]
    finished = [line for line in report.stdout.splitlines() if line.startswith("| 1 ")]
    assert len(finished) == 1 and "optimizer.lr=0.03" in finished[0]
    assert "failed" not in finished[0]
    assert "1 of 2 jobs failed" in report.stdout
    with open(sweep / "report.csv") as handle:
        statuses = [row["status"] for row in csv.DictReader(handle)]
    assert statuses == ["failed", "finished"]
