"""Quality protocols: does ReCo help, at a budget two CPUs can run?

Two protocols. ``cpu16v2`` (``benchmarks/quality_v2.py``, issue 23) is the one the README's
headline comes from: every choice made on validation cells, test cells refused until then,
three seeds, equal compute from measured step costs, every result with its commit and
per-epoch term logs:

    python benchmarks/quality.py run --protocol cpu16v2 --cells val --jobs 2
    python benchmarks/quality.py decide --protocol cpu16v2
    python benchmarks/quality.py run --protocol cpu16v2 --cells test --jobs 2
    python benchmarks/quality.py report --protocol cpu16v2 --docs

``cpu16`` (below) is the first round, kept as history: its defaults were chosen partly on
the test images its table reports (docs/benchmarks.md, "How the defaults were chosen").

    # the first round's grid (history)
    python benchmarks/quality.py run --protocol cpu16 --cells grid --jobs 2
    # one seed of each ReCo setting alone
    python benchmarks/quality.py run --cells ablations --jobs 2
    # ReCo off for as long as ReCo on took
    python benchmarks/quality.py run --cells equal-time
    # plain methods from lightly's parts
    python benchmarks/quality.py run --cells baselines
    # SimCLR off/on at 32 px, 6 epochs
    python benchmarks/quality.py run --cells resolution
    # BYOL and MoCo + ReCo with CutMix, the grid's 2 seeds
    python benchmarks/quality.py run --cells mixup
    # SimCLR + ReCo with batch negatives, the grid's 2 seeds
    python benchmarks/quality.py run --cells negatives
    # tables, docs/img/quality_*.png, docs tables
    python benchmarks/quality.py report --docs

The protocol ``cpu16`` (see ``PROTOCOLS``) trains each method with the shipped presets on
the CIFAR-10 image folder (``../shared/data/cifar10``: 25,000 training images, 10,000 test
images) and, per cell:

* logs the kNN accuracy (k=200) on the test images after every epoch, and the training wall
  time so far (``time/train_s``), so curves show when ReCo starts to help or hurt;
* at the end evaluates the *last* checkpoint with ``python -m reco_lightning.eval`` (kNN top-1
  and a linear classifier on frozen features);
* writes ``benchmarks/results/quality/<protocol>/<cell>.json``, which is committed, so a
  later session goes on with the grid where this one stopped.

No checkpoint is picked by the test labels, but in this first round some defaults were:
the 2-epoch warm-up and SimCLR's EMA teacher by the 6-epoch pilot's kNN on the test images,
and ``reco.mix=auto`` (Mixup for MoCo and BYOL) by grid cells on the test split, which then
became the headline. The ablation cells train on 20,000 training images and measure on the
other 5,000 (``--split trainval``, made as a tree of links under ``benchmark_runs/``).

Runs resume (``resume=auto`` in their run directory) and run ``--jobs`` at a time, one
thread each. Training happens in ``benchmark_runs/quality/`` (not committed).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import quality_v2

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "quality"
RUNS = ROOT / "benchmark_runs" / "quality"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10"
#: a Python with reco_lightning and lightly (see benchmarks/peers.py), for the baseline cells
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"

#: Named protocols: overrides shared by every cell. ``cpu16``: 16 px images (the 32 px
#: CIFAR images resized), ResNet-18 at width 16 with the small-image stem, batch 256, bf16
#: autocast (1.4x faster than fp32 at this size on these CPUs), 20 epochs.
PROTOCOLS: dict[str, list[str]] = {
    "cpu16": [
        "dataset=imagefolder",
        "dataset.image_size=16",
        "backbone.width=16",
        "dataset.batch_size=256",
        "trainer.precision=bf16-mixed",
        "trainer.max_epochs=20",
        "dataset.num_workers=0",
        "dataset.pin_memory=false",
        "trainer.enable_progress_bar=false",
        "pictures=false",
    ],
}
METHODS = ("moco", "simclr", "byol")
#: names of the grid's cells (method, ReCo off/on, seed)
GRID_CELL = re.compile(r"(moco|simclr|byol)-(on|off)-s\d+")


@dataclass(frozen=True)
class Cell:
    """One training run of the protocol."""

    name: str
    method: str
    reco: bool
    seed: int = 0
    overrides: tuple[str, ...] = field(default=())
    split: str = "test"  # "test": train on train/, measure on test/; "trainval": 20k/5k of train/
    peer: bool = False  # the plain method built from lightly's parts (benchmarks/peer_quality.py)

    def command(self, protocol: str, root: Path, run_dir: Path) -> list[str]:
        program = (
            [str(PEERS_PYTHON), str(ROOT / "benchmarks" / "peer_quality.py")]
            if self.peer
            else [sys.executable, "-m", "reco_lightning"]
        )
        return [
            *program,
            f"+method={self.method}",
            f"+reco={'on' if self.reco else 'off'}",
            *PROTOCOLS[protocol],
            f"dataset.root={root}",
            f"seed={self.seed}",
            *self.overrides,
            f"hydra.run.dir={run_dir}",
            "resume=auto",
        ]


def grid_cells(seeds: tuple[int, ...] = (0, 1)) -> list[Cell]:
    """Each method with ReCo off and on, shipped presets, two seeds."""
    return [
        Cell(f"{method}-{'on' if reco else 'off'}-s{seed}", method, reco, seed)
        for seed in seeds
        for method in METHODS
        for reco in (False, True)
    ]


#: Each ReCo setting alone, against the shipped default (seed 0, held-out split). The
#: default takes its negatives from a queue (``reco.negatives=queue``), so that cell is
#: ``default`` itself.
ABLATIONS: dict[str, tuple[str, ...]] = {
    "off": (),
    "default": (),
    "global-only": ("reco.w_local=0",),
    "local-only": ("reco.w_global=0",),
    "warmup-0": ("reco.warmup_epochs=0",),
    "negatives-batch": ("reco.negatives=batch",),
    "mixup": ("reco.mix=mixup",),
}


def resolution_cells() -> list[Cell]:
    """SimCLR off and on at the CIFAR images' own 32 px (seed 0, 6 epochs, 4x the pixels of
    16 px): does the protocol's resolution decide the answer?"""
    overrides = ("dataset.image_size=32", "trainer.max_epochs=6")
    return [
        Cell(f"simclr-{'on' if reco else 'off'}-s0-32px", "simclr", reco, 0, overrides)
        for reco in (False, True)
    ]


#: methods whose ReCo mixes with Mixup under ``reco.mix=auto`` (the others: CutMix)
MIXUP_METHODS = ("byol", "moco")


def mixup_cells(seeds: tuple[int, ...] = (0, 1)) -> list[Cell]:
    """ReCo with CutMix on the grid's seeds and split, for each method whose default became
    Mixup (BYOL and MoCo, 2026-12-03), against the grid's cells of that method. The Mixup
    cells ran as ``reco.mix=mixup`` before it became the default; their result files are the
    grid's ``<method>-on-s0``/``-s1`` and the CutMix cells are the grid's earlier ones."""
    return [
        Cell(f"{method}-on-cutmix-s{seed}", method, True, seed, ("reco.mix=cutmix",))
        for method in MIXUP_METHODS
        for seed in seeds
    ]


def negatives_cells(seeds: tuple[int, ...] = (0, 1)) -> list[Cell]:
    """SimCLR + ReCo with the local term's negatives from the batch (``reco.negatives=batch``)
    on the grid's seeds and split, against the grid's queue cells: it gained 0.56 kNN in the
    ablations (one seed, held-out split), and it reads no queue."""
    return [
        Cell(f"simclr-on-negbatch-s{seed}", "simclr", True, seed, ("reco.negatives=batch",))
        for seed in seeds
    ]


def baseline_cells() -> list[Cell]:
    """Each plain method built from lightly's parts, through our job (seed 0)."""
    return [Cell(f"{method}-lightly-s0", method, False, 0, peer=True) for method in METHODS]


def ablation_cells() -> list[Cell]:
    """The ablation table was measured with CutMix as every method's default. MoCo and BYOL
    now mix with Mixup (``reco.mix=auto``), so their cells other than ``mixup`` pin CutMix: a
    cell run today compares with the ``default`` cell the table holds."""
    cells = []
    for method in METHODS:
        settings = dict(ABLATIONS)
        if method == "simclr":
            settings["teacher-online"] = ("reco.teacher=online",)
        for name, overrides in settings.items():
            if method in MIXUP_METHODS and name not in ("off", "mixup"):
                overrides = (*overrides, "reco.mix=cutmix")
            cells.append(
                Cell(f"{method}-abl-{name}", method, name != "off", 0, overrides, split="trainval")
            )
    return cells


def trainval_root(data: Path) -> Path:
    """A tree of links: ``train/`` holds the first 2,000 images of each class of
    ``data/train``, ``val/`` the other 500; the test images are not there at all.

    Built in a private folder and renamed into place, so that two lanes that start together
    neither collide nor see half a tree."""
    root = ROOT / "benchmark_runs" / "cifar10_trainval"
    if root.is_dir():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix="cifar10_trainval.", dir=root.parent))
    for class_dir in sorted((data / "train").iterdir()):
        images = sorted(class_dir.iterdir())
        for split, chosen in (("train", images[:2000]), ("val", images[2000:])):
            target = building / split / class_dir.name
            target.mkdir(parents=True)
            for image in chosen:
                (target / image.name).symlink_to(image.resolve())
    try:
        building.rename(root)
    except OSError:  # another lane got there first
        shutil.rmtree(building)
    return root


# --------------------------------------------------------------------------- running
def read_curve(run_dir: Path) -> list[dict[str, float]]:
    """Per epoch: kNN accuracy and training seconds so far (``time/train_s``, which a resumed
    run carries on), from the run's ``metrics.csv`` (which keeps every row across resumes)
    and the ``metrics-N.csv`` parts that runs made before it did, oldest first, so that an
    epoch that was run again after a resume takes its newer value."""
    epochs = quality_v2.read_epochs(run_dir)
    return [
        {
            "epoch": e + 1,
            "knn": float(row["val/knn_acc"]),
            "train_s": float(row["time/train_s"]) if "time/train_s" in row else None,
        }
        for e, row in sorted(epochs.items())
        if "val/knn_acc" in row
    ]


def run_cell(cell: Cell, protocol: str, data: Path) -> dict:
    """Train (or resume) and evaluate one cell; write and return its result."""
    result_file = RESULTS / protocol / f"{cell.name}.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    root = trainval_root(data) if cell.split == "trainval" else data
    run_dir = RUNS / protocol / cell.name
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    quality_v2.train_and_evaluate(cell.command(protocol, root, run_dir), run_dir, env)
    summary = json.loads((run_dir / "summary.json").read_text())
    curve = read_curve(run_dir)
    evaluation = json.loads((run_dir / "eval.json").read_text())
    result = {
        "cell": cell.name,
        "protocol": protocol,
        "protocol_overrides": PROTOCOLS[protocol],
        "method": cell.method,
        "reco": cell.reco,
        "seed": cell.seed,
        "overrides": list(cell.overrides),
        "split": cell.split,
        "peer": "lightly" if cell.peer else None,
        "epochs": summary["epochs"],
        # training seconds without the kNN monitoring, summed over every resume
        "train_time_s": round(curve[-1]["train_s"], 1),
        "fit_wall_s_last_session": summary["train_time_s"],
        "knn_random_init": summary["knn_acc_random_init"],
        "curve": curve,
        "final_knn": evaluation["knn"]["top1"],
        "final_linear": evaluation.get("linear", {}).get("top1"),
    }
    result_file.parent.mkdir(parents=True, exist_ok=True)
    result_file.write_text(json.dumps(result, indent=2) + "\n")
    return result


#: epochs of the equal-time cells: the protocol's 20 times the ratio of training times of the
#: grid's seed-0 pair (ReCo on / off) in its first run, where the two cells ran side by side
#: and nothing else: MoCo 1213/807 s, SimCLR 1484/981 s, BYOL 2117/1511 s (BYOL + ReCo with
#: CutMix, its default then; with Mixup it took 1715 s, so 28 epochs favour ReCo off)
EQUAL_TIME_EPOCHS = {"moco": 30, "simclr": 30, "byol": 28}


def equal_time_cells() -> list[Cell]:
    """ReCo off, seed 0, trained for as many epochs as fit in the time ReCo on took
    (:data:`EQUAL_TIME_EPOCHS`): accuracy at equal wall time, not equal epochs."""
    return [
        Cell(f"{method}-off-time-s0", method, False, 0, (f"trainer.max_epochs={epochs}",))
        for method, epochs in EQUAL_TIME_EPOCHS.items()
    ]


def select(cells_arg: str, protocol: str) -> list[Cell]:
    cells = {
        "grid": grid_cells(),
        "ablations": ablation_cells(),
        "equal-time": equal_time_cells(),
        "baselines": baseline_cells(),
        "resolution": resolution_cells(),
        "mixup": mixup_cells(),
        "negatives": negatives_cells(),
    }
    chosen: list[Cell] = []
    by_name = {c.name: c for group in cells.values() for c in group}
    for part in cells_arg.split(","):
        if part in cells:
            chosen.extend(cells[part])
        elif part in by_name:
            chosen.append(by_name[part])
        else:
            raise SystemExit(f"--cells: unknown cell or group {part!r}; groups: {sorted(cells)}")
    return chosen


def command_run(args: argparse.Namespace) -> None:
    data = Path(args.root).resolve()
    if not (data / "train").is_dir():
        raise SystemExit(
            f"--root {data}: no train/ folder (the CIFAR-10 image folder is ../shared/data/cifar10)"
        )
    if args.protocol == quality_v2.PROTOCOL:
        return run_v2(args.cells, data, args.jobs)
    cells = select(args.cells, args.protocol)

    def one(cell: Cell) -> None:
        try:
            result = run_cell(cell, args.protocol, data)
            print(
                f"{cell.name}: kNN {100 * result['final_knn']:.2f}, "
                f"linear {100 * result['final_linear']:.2f}, {result['train_time_s']:.0f} s",
                flush=True,
            )
        except subprocess.CalledProcessError as error:
            print(
                f"{cell.name}: failed ({error}); "
                f"see {RUNS / args.protocol / cell.name / 'train.log'}",
                flush=True,
            )

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(one, cells))


def run_v2(cells_arg: str, data: Path, jobs: int) -> None:
    """Cells of ``cpu16v2``, ``jobs`` at a time; a refused or failed cell is reported and the
    others go on."""
    groups = quality_v2.groups()
    by_name = {cell.name: cell for group in groups.values() for cell in group}
    chosen: list[quality_v2.Cell] = []
    for part in cells_arg.split(","):
        if part not in groups and part not in by_name:
            raise SystemExit(f"--cells: unknown cell or group {part!r}; groups: {sorted(groups)}")
        chosen += [
            c for c in groups.get(part, [by_name.get(part)]) if c is not None and c not in chosen
        ]

    def one(cell: quality_v2.Cell) -> None:
        try:
            result = quality_v2.run_cell(cell, data, trainval_root)
            print(
                f"{cell.name}: kNN {pct(result['final_knn'])}, "
                f"linear {pct(result['final_linear'])}",
                flush=True,
            )
        except quality_v2.CellRefused as refusal:
            print(f"{cell.name}: refused: {refusal}", flush=True)
        except subprocess.CalledProcessError as error:
            print(
                f"{cell.name}: failed ({error}); see {quality_v2.RUNS / cell.name / 'train.log'}",
                flush=True,
            )

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(one, chosen))


# --------------------------------------------------------------------------- reporting
def load_results(protocol: str) -> dict[str, dict]:
    folder = RESULTS / protocol
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def report_grid(results: dict[str, dict]) -> None:
    print("| method | ReCo | seed | kNN (last epoch) | linear | training time (s) |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name, r in results.items():
        if GRID_CELL.fullmatch(name):
            print(
                f"| {r['method']} | {'on' if r['reco'] else 'off'} | {r['seed']} | "
                f"{pct(r['final_knn'])} | {pct(r['final_linear'])} | {r['train_time_s']:.0f} |"
            )
    print()
    print(
        "| method | kNN off | kNN on | on - off | linear off | linear on | time on / off | "
        "off, equal time |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for method in METHODS:
        off = [
            r
            for name, r in results.items()
            if GRID_CELL.fullmatch(name) and name.startswith(f"{method}-off-")
        ]
        on = [
            r
            for name, r in results.items()
            if GRID_CELL.fullmatch(name) and name.startswith(f"{method}-on-")
        ]
        if not off or not on:
            continue
        mean = lambda rs, key: statistics.mean(r[key] for r in rs)  # noqa: E731
        time_on, time_off = mean(on, "train_time_s"), mean(off, "train_time_s")
        longer = results.get(f"{method}-off-time-s0")
        equal_time = (
            f"{pct(longer['final_knn'])} ({longer['epochs']} ep, {longer['train_time_s']:.0f} s)"
            if longer
            else "—"
        )
        print(
            f"| {method} (seeds {len(off)}/{len(on)}) | {pct(mean(off, 'final_knn'))} | "
            f"{pct(mean(on, 'final_knn'))} | "
            f"{100 * (mean(on, 'final_knn') - mean(off, 'final_knn')):+.2f} | "
            f"{pct(mean(off, 'final_linear'))} | {pct(mean(on, 'final_linear'))} | "
            f"{time_on / time_off:.2f} | {equal_time} |"
        )


def report_baselines(results: dict[str, dict]) -> None:
    print(
        "| method | ours, ReCo off (seed 0) | lightly's parts, same job (seed 0) | "
        "ours - lightly | seed 0 - seed 1 (ours) |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    for method in METHODS:
        ours, peer = results.get(f"{method}-off-s0"), results.get(f"{method}-lightly-s0")
        if not ours or not peer:
            continue
        other = results.get(f"{method}-off-s1")
        spread = f"{100 * (ours['final_knn'] - other['final_knn']):+.2f}" if other else "—"
        print(
            f"| {method} | {pct(ours['final_knn'])} | {pct(peer['final_knn'])} | "
            f"{100 * (ours['final_knn'] - peer['final_knn']):+.2f} | {spread} |"
        )


def report_resolution(results: dict[str, dict]) -> None:
    off, on = results.get("simclr-off-s0-32px"), results.get("simclr-on-s0-32px")
    if off and on:
        print(
            "| SimCLR, seed 0 | kNN off | kNN on | on - off | linear off | linear on | "
            "time on / off |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for label, suffix in (("16 px, 20 epochs (grid)", ""), ("32 px, 6 epochs", "-32px")):
            off, on = results.get(f"simclr-off-s0{suffix}"), results.get(f"simclr-on-s0{suffix}")
            if off and on:
                print(
                    f"| {label} | {pct(off['final_knn'])} | {pct(on['final_knn'])} | "
                    f"{100 * (on['final_knn'] - off['final_knn']):+.2f} | "
                    f"{pct(off['final_linear'])} | {pct(on['final_linear'])} | "
                    f"{on['train_time_s'] / off['train_time_s']:.2f} |"
                )


def report_mixup(results: dict[str, dict]) -> None:
    """ReCo with Mixup (the grid's cells, the default) against CutMix and ReCo off, for
    the methods whose default is Mixup."""
    rows = [
        (
            method,
            seed,
            results.get(f"{method}-off-s{seed}"),
            results.get(f"{method}-on-cutmix-s{seed}"),
            results.get(f"{method}-on-s{seed}"),
        )
        for method in MIXUP_METHODS
        for seed in (0, 1)
    ]
    rows = [row for row in rows if all(row[2:])]
    if not rows:
        return
    print(
        "| method | seed | kNN off | kNN on, CutMix | kNN on, Mixup | Mixup - CutMix | "
        "Mixup - off | linear CutMix | linear Mixup |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for method, seed, off, cutmix, mixup in rows:
        print(
            f"| {method} | {seed} | {pct(off['final_knn'])} | {pct(cutmix['final_knn'])} | "
            f"{pct(mixup['final_knn'])} | "
            f"{100 * (mixup['final_knn'] - cutmix['final_knn']):+.2f} | "
            f"{100 * (mixup['final_knn'] - off['final_knn']):+.2f} | "
            f"{pct(cutmix['final_linear'])} | {pct(mixup['final_linear'])} |"
        )


def report_negatives(results: dict[str, dict]) -> None:
    """SimCLR + ReCo with batch negatives against the grid's queue cells, per seed."""
    rows = [
        (
            seed,
            results.get(f"simclr-off-s{seed}"),
            results.get(f"simclr-on-s{seed}"),
            results.get(f"simclr-on-negbatch-s{seed}"),
        )
        for seed in (0, 1)
    ]
    rows = [row for row in rows if all(row[1:])]
    if not rows:
        return
    print(
        "| SimCLR | seed | kNN off | kNN on, queue | kNN on, batch | batch - queue | batch - off | "
        "linear queue | linear batch | time batch / queue |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for seed, off, queue, batch in rows:
        print(
            f"| simclr | {seed} | {pct(off['final_knn'])} | {pct(queue['final_knn'])} | "
            f"{pct(batch['final_knn'])} | "
            f"{100 * (batch['final_knn'] - queue['final_knn']):+.2f} | "
            f"{100 * (batch['final_knn'] - off['final_knn']):+.2f} | "
            f"{pct(queue['final_linear'])} | {pct(batch['final_linear'])} | "
            f"{batch['train_time_s'] / queue['train_time_s']:.2f} |"
        )


def report_ablations(results: dict[str, dict]) -> None:
    print(
        "| method | setting | overrides | kNN (held-out 5,000) | linear | kNN vs off | "
        "kNN vs default | training time (s) |"
    )
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    order = [
        "off",
        "default",
        *(name for name in ABLATIONS if name not in ("off", "default")),
        "teacher-online",
    ]
    for method in METHODS:
        rows = {
            name.split("-abl-")[1]: r
            for name, r in results.items()
            if name.startswith(f"{method}-abl-")
        }
        off, default = rows.get("off"), rows.get("default")
        for setting in sorted(
            rows, key=lambda name: order.index(name) if name in order else len(order)
        ):
            r = rows[setting]
            vs_off = "" if off is None else f"{100 * (r['final_knn'] - off['final_knn']):+.2f}"
            vs_default = (
                "" if default is None else f"{100 * (r['final_knn'] - default['final_knn']):+.2f}"
            )
            print(
                f"| {method} | {setting} | {' '.join(r['overrides']) or '—'} | "
                f"{pct(r['final_knn'])} | {pct(r['final_linear'])} | {vs_off} | {vs_default} | "
                f"{r['train_time_s']:.0f} |"
            )


def plot_curves(results: dict[str, dict], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for method in METHODS:
        runs = [
            r
            for name, r in results.items()
            if name.startswith(method)
            and (GRID_CELL.fullmatch(name) or re.fullmatch(r"\w+-on-cutmix-s\d+", name))
        ]
        if not runs:
            continue
        figure, axis = plt.subplots(figsize=(6, 4))
        for r in runs:
            epochs = [0] + [p["epoch"] for p in r["curve"]]
            knn = [r["knn_random_init"]] + [p["knn"] for p in r["curve"]]
            cutmix = "-cutmix-" in r["cell"]
            axis.plot(
                epochs,
                [100 * v for v in knn],
                color="tab:gray" if cutmix else "tab:red" if r["reco"] else "tab:blue",
                linestyle="-" if r["seed"] == 0 else "--",
                label=(
                    f"ReCo {'on, CutMix' if cutmix else 'on' if r['reco'] else 'off'}, "
                    f"seed {r['seed']}"
                ),
            )
        axis.set_xlabel("epoch")
        axis.set_ylabel("kNN top-1 on the 10,000 test images (%)")
        axis.set_title(f"{method}: protocol {runs[0]['protocol']}")
        axis.grid(alpha=0.3)
        axis.legend()
        figure.tight_layout()
        out_dir.mkdir(parents=True, exist_ok=True)
        figure.savefig(out_dir / f"quality_{method}.png", dpi=100)
        plt.close(figure)
        print(f"wrote {out_dir / f'quality_{method}.png'}")


#: generated blocks of docs/benchmarks.md: ``<!-- name -->`` ... ``<!-- /name -->``, and what
#: fills each
DOC_BLOCKS = {
    "quality-results": report_grid,
    "ablation-results": report_ablations,
    "mixup-results": report_mixup,
    "resolution-results": report_resolution,
    "negatives-results": report_negatives,
}


def write_docs(
    results: dict[str, dict], doc: Path = ROOT / "docs" / "benchmarks.md", blocks=None
) -> None:
    """Refill the generated tables of ``doc`` from the result files."""
    text = doc.read_text()
    for name, report in (blocks or DOC_BLOCKS).items():
        start, end = f"<!-- {name} -->\n", f"<!-- /{name} -->"
        if start not in text:
            continue
        table = io.StringIO()
        with contextlib.redirect_stdout(table):
            report(results)
        text = re.sub(
            re.escape(start) + ".*?" + re.escape(end),
            lambda _: start + table.getvalue() + end,
            text,
            flags=re.S,
        )
    doc.write_text(text)
    print(f"refilled the tables of {doc}")


def command_decide(args: argparse.Namespace) -> None:
    """What validation chose for each method, and what is missing."""
    quality_v2.report_choices(quality_v2.load_results())


def command_report(args: argparse.Namespace) -> None:
    if args.protocol == quality_v2.PROTOCOL:
        results = quality_v2.load_results()
        quality_v2.report(results)
        if args.plots and results:
            quality_v2.plot_curves(results, ROOT / "docs" / "img")
        if args.docs:
            write_docs(results, blocks=quality_v2.DOC_BLOCKS)
        return
    results = load_results(args.protocol)
    if not results:
        raise SystemExit(
            f"no results under {RESULTS / args.protocol} yet: run `quality.py run` first"
        )
    print(f"# Protocol {args.protocol}: {' '.join(PROTOCOLS[args.protocol])}\n")
    report_grid(results)
    print()
    report_baselines(results)
    print()
    report_resolution(results)
    print()
    report_mixup(results)
    print()
    report_negatives(results)
    print()
    report_ablations(results)
    if args.plots:
        plot_curves(results, ROOT / "docs" / "img")
    if args.docs:
        write_docs(results)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train and evaluate cells (skips those with a result file)")
    run.add_argument(
        "--cells", default="grid", help="grid, ablations, or cell names, comma-separated"
    )
    run.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    run.add_argument("--root", default=str(DEFAULT_DATA), help="image folder with train/ and test/")
    protocols = sorted([*PROTOCOLS, quality_v2.PROTOCOL])
    run.add_argument("--protocol", default=quality_v2.PROTOCOL, choices=protocols)
    decide = sub.add_parser("decide", help="what the validation cells chose (cpu16v2)")
    decide.add_argument("--protocol", default=quality_v2.PROTOCOL, choices=[quality_v2.PROTOCOL])
    report = sub.add_parser("report", help="tables of the result files, and the curves")
    report.add_argument("--protocol", default=quality_v2.PROTOCOL, choices=protocols)
    report.add_argument("--no-plots", dest="plots", action="store_false")
    report.add_argument(
        "--docs", action="store_true", help="also refill the tables of docs/benchmarks.md"
    )
    args = parser.parse_args()
    {"run": command_run, "decide": command_decide, "report": command_report}[args.command](args)


if __name__ == "__main__":
    main()
