"""``python -m reco_lightning.run.report SWEEP_DIR``: one table of a sweep's jobs, and a plot.

Collects each job's ``summary.json`` and Hydra's ``.hydra/overrides.yaml`` beside it into
``report.csv``, ``report.md`` (also printed) and ``report.png`` in the sweep directory;
README.md, "Sweeps and their report", says what they show. A job that failed (its
``failed.json``, see :mod:`.sweep`) is a row too, with its overrides and its one-line error,
and the report says how many failed.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from .sweep import FAILED_FILE, read_failure

#: the PNG files a training run draws (linked from the Markdown report)
PICTURES = ("training_curves.png", "feature_map.png")

COLUMNS = (
    "job",
    "overrides",
    "method",
    "reco",
    "dataset",
    "epochs",
    "steps",
    "knn_acc",
    "linear_acc",
    "knn_acc_random_init",
    "train_time_s",
    "status",
    "error",
)


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job under ``sweep_dir`` (its ``summary.json``, or the ``failed.json`` of a
    job that failed), in job-directory order."""
    if not sweep_dir.is_dir():
        raise ConfigError(
            f"SWEEP_DIR={sweep_dir} is not a directory: pass the directory a sweep wrote"
        )
    rows = []
    jobs = {p.parent for name in ("summary.json", FAILED_FILE) for p in sweep_dir.rglob(name)}
    for job_dir in sorted(jobs, key=lambda p: _natural(p, sweep_dir)):
        overrides_path = job_dir / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_path.read_text()) if overrides_path.is_file() else None
        if (job_dir / FAILED_FILE).is_file():  # the job's latest attempt failed
            failure = read_failure(job_dir / FAILED_FILE)
            row = {key: None for key in COLUMNS}
            row.update(status="failed", error=failure.get("error"))
            overrides = overrides if overrides is not None else failure.get("overrides")
        else:
            summary = json.loads((job_dir / "summary.json").read_text())
            row = {key: summary.get(key) for key in COLUMNS}
            row.update(status="finished", error=None)
        row["job"] = str(job_dir.relative_to(sweep_dir)) or "."
        row["overrides"] = " ".join(overrides or [])
        row["pictures"] = [
            f"{row['job']}/{name}" for name in PICTURES if (job_dir / name).is_file()
        ]
        rows.append(row)
    if not rows:
        raise ConfigError(
            f"no summary.json (nor {FAILED_FILE}) under {sweep_dir}: pass the directory of a sweep "
            "whose jobs ran (hydra.sweep.dir, multirun/DATE/TIME by default)"
        )
    return rows


def _natural(job_dir: Path, root: Path) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in job_dir.relative_to(root).parts)


def _fmt(value: Any, percent: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{100 * float(value):.2f}" if percent else str(value)


def common_overrides(rows: list[dict[str, Any]]) -> list[str]:
    """Overrides every job shares (listed once above the table, not in each row)."""
    sets = [row["overrides"].split() for row in rows]
    return [o for o in sets[0] if all(o in other for other in sets[1:])] if len(rows) > 1 else []


def failed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of the jobs that failed."""
    return [row for row in rows if row.get("status") == "failed"]


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table of the jobs; an ``error`` column, and a count below, when some failed."""
    shared = common_overrides(rows)
    errors = failed(rows)
    header = (
        "| job | overrides | kNN (%) | linear (%) | kNN at init (%) | "
        "epochs | time (s) | pictures |" + (" error |" if errors else "")
    )
    lines = [f"Common to all jobs: `{' '.join(shared)}`", ""] if shared else []
    lines += [header, "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    lines[-1] += " --- |" if errors else ""
    for row in rows:
        own = " ".join(o for o in row["overrides"].split() if o not in shared)
        accuracies = (_fmt(row[k], True) for k in ("knn_acc", "linear_acc", "knn_acc_random_init"))
        cells = [
            row["job"],
            f"`{own}`",
            *accuracies,
            _fmt(row["epochs"]),
            _fmt(row["train_time_s"]),
            " ".join(f"[{Path(p).stem.replace('_', ' ')}]({p})" for p in row["pictures"]),
        ]
        if errors:
            error = row.get("error")
            cells.append(f"failed: {error}".replace("|", "\\|") if error else "")
        lines.append(f"| {' | '.join(cells)} |")
    if errors:
        lines += ["", f"{len(errors)} of {len(rows)} jobs failed (each job's {FAILED_FILE})."]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Grouped bars: kNN accuracy per method, ReCo off and on; dots are single jobs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple[str, bool], list[float]] = defaultdict(list)
    for row in rows:
        if row["knn_acc"] is not None:
            groups[(str(row["method"]), bool(row["reco"]))].append(100 * float(row["knn_acc"]))
    methods = sorted({method for method, _ in groups})
    figure, axes = plt.subplots(figsize=(1.8 + 1.6 * len(methods), 3.6), dpi=120)
    width = 0.38
    for offset, reco, colour in ((-width / 2, False, "#9aa5b1"), (width / 2, True, "#2f6db5")):
        for i, method in enumerate(methods):
            values = groups.get((method, reco), [])
            if not values:
                continue
            x = i + offset
            axes.bar(
                x,
                sum(values) / len(values),
                width,
                color=colour,
                label=("ReCo on" if reco else "ReCo off") if i == 0 else None,
            )
            axes.scatter([x] * len(values), values, color="black", s=10, zorder=3)
    baseline = [
        100 * float(r["knn_acc_random_init"]) for r in rows if r["knn_acc_random_init"] is not None
    ]
    if baseline:
        axes.axhline(
            sum(baseline) / len(baseline),
            color="#c0392b",
            linestyle="--",
            linewidth=1,
            label="random init",
        )
    axes.set_xticks(range(len(methods)), methods)
    axes.set_ylabel("kNN accuracy (%)")
    axes.set_title("kNN accuracy by method")
    axes.legend(loc="lower right", fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write_report(sweep_dir: Path) -> list[dict[str, Any]]:
    rows = collect(sweep_dir)
    with open(sweep_dir / "report.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (sweep_dir / "report.md").write_text(markdown(rows))
    if len(failed(rows)) < len(rows):  # a plot of no finished job would be empty
        plot(rows, sweep_dir / "report.png")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m reco_lightning.run.report", description=__doc__.splitlines()[0]
    )
    parser.add_argument("sweep_dir", type=Path, help="directory of a sweep (hydra.sweep.dir)")
    args = parser.parse_args(argv)
    try:
        rows = write_report(args.sweep_dir)
    except ConfigError as error:
        print(f"reco_lightning.run.report: error: {error}", file=sys.stderr)
        return 2
    print(markdown(rows))
    png = (
        " and report.png" if len(failed(rows)) < len(rows) else " (no report.png: no job finished)"
    )
    print(f"wrote report.csv, report.md{png} in {args.sweep_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
