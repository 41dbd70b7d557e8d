"""Do two commits train the same numbers? The check that validation's choices carry over.

``cpu16v2``'s validation cells run the pinned ``VAL_CODE``; its test cells run a later commit
(``TEST_CODE``) that ships the chosen defaults and writes ``last.ckpt`` at every epoch. The
choices carry over only if the training itself did not change between the two. This trains
each method with ReCo on for a few steps over two epochs (the warm-up's epoch boundary
included) at the protocol's settings under both commits, and compares every logged value of
every step and epoch, except wall times: the losses, ReCo's weights, kNN and relation
diagnostics must be the same to the last digit; the terms' gradient norms and shares, a
measurement made beside training (``diagnostics.term_grad_steps``) whose code was rewritten
in between, to a relative ``1e-6`` (float32 sums in another order):

    python benchmarks/same_training.py 960070b3 HEAD
    python benchmarks/same_training.py 960070b3 HEAD --overrides reco.scale=relative
    python benchmarks/same_training.py 960070b3 HEAD --methods moco \
        --first-overrides reco.warmup_epochs=0

The last form is the check a test cell rests on: the first commit with a validation cell's
overrides must train what the second trains with none, its shipped default.

Both commits run from trees unpacked as the protocol's cells are (``benchmark_runs/code/``),
one thread each, on the validation split's folder (``quality.trainval_root``). Exit status 1
when a value differs.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import quality
import quality_v2

#: a short run at the protocol's settings: 3 steps in each of 2 epochs, a one-batch validation
SHORT = [
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=1",
    "trainer.log_every_n_steps=1",
]
#: columns that are not training results
CLOCK_COLUMNS = ("time/",)
#: measurements beside training, compared to MEASURE_RTOL
MEASURE_COLUMNS = ("train/grad_norm_", "train/grad_share_")
MEASURE_RTOL = 1e-6


def logged_rows(metrics_csv: Path) -> list[dict[str, str]]:
    """The rows of a run's ``metrics.csv``, without the wall-clock columns."""
    with open(metrics_csv, newline="") as handle:
        return [
            {k: v for k, v in row.items() if not k.startswith(CLOCK_COLUMNS)}
            for row in csv.DictReader(handle)
        ]


def train_short(commit: str, method: str, overrides: list[str], out: Path) -> Path:
    """Train ``method`` + ReCo briefly under ``commit``; return the run's ``metrics.csv``."""
    tree = quality_v2.code_tree(commit)
    cell = quality_v2.Cell("same-training", method, True, 0, tuple(overrides), "trainval")
    data_root = os.path.relpath(quality.trainval_root(quality.DEFAULT_DATA), quality_v2.ROOT)
    run_dir = out / f"{commit[:10]}-{method}"
    command = [
        sys.executable,
        "-m",
        "reco_lightning",
        *cell.arguments(data_root),
        *SHORT,
        f"hydra.run.dir={run_dir}",
    ]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{commit[:10]}-{method}.log", "w") as log:
        subprocess.run(
            command,
            env=quality_v2.code_env(tree),
            cwd=quality_v2.ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=True,
        )
    return run_dir / "metrics.csv"


def same_value(column: str, a: str, b: str) -> bool:
    if a == b:
        return True
    if not column.startswith(MEASURE_COLUMNS) or not a or not b:
        return False
    return abs(float(a) - float(b)) <= MEASURE_RTOL * max(abs(float(a)), abs(float(b)))


def differences(first: list[dict[str, str]], second: list[dict[str, str]]) -> list[str]:
    """Each logged value that is not the same in both runs (columns both log)."""
    if len(first) != len(second):
        return [f"{len(first)} rows against {len(second)}"]
    found = []
    for number, (a, b) in enumerate(zip(first, second)):
        for column in sorted(set(a) & set(b)):
            if not same_value(column, a[column], b[column]):
                found.append(f"row {number} {column}: {a[column]!r} against {b[column]!r}")
    return found


def bit_identical(first: list[dict[str, str]], second: list[dict[str, str]]) -> tuple[int, int]:
    """(values equal to the last digit, values compared), over the columns both log."""
    equal = compared = 0
    for a, b in zip(first, second):
        for column in set(a) & set(b):
            if a[column] or b[column]:
                compared += 1
                equal += a[column] == b[column]
    return equal, compared


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first", help="a commit (e.g. quality_v2.VAL_CODE)")
    parser.add_argument("second", help="a commit (e.g. HEAD)")
    parser.add_argument("--methods", nargs="+", default=list(quality_v2.METHODS))
    parser.add_argument("--overrides", nargs="*", default=[], help="extra CLI overrides")
    parser.add_argument(
        "--first-overrides",
        nargs="*",
        default=[],
        help="overrides for the first commit only (a validation setting the second ships)",
    )
    arguments = parser.parse_args()
    commits = [quality_v2.git("rev-parse", c) for c in (arguments.first, arguments.second)]
    overrides = [arguments.overrides + arguments.first_overrides, arguments.overrides]
    same = True
    with tempfile.TemporaryDirectory() as out:
        for method in arguments.methods:
            runs = [
                logged_rows(train_short(c, method, o, Path(out) / str(n)))
                for n, (c, o) in enumerate(zip(commits, overrides))
            ]
            found = differences(*runs)
            equal, compared = bit_identical(*runs)
            only = sorted(set(runs[0][0]) ^ set(runs[1][0])) if runs[0] and runs[1] else []
            verdict = "same" if not found else f"{len(found)} values differ"
            print(
                f"{method}: {verdict} ({compared} logged values in {len(runs[0])} rows, "
                f"{equal} equal to the last digit"
                + (f"; logged by one commit only: {', '.join(only)}" if only else "")
                + ")"
            )
            for line in found[:10]:
                print("   ", line)
            same &= not found
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
