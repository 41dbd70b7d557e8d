"""Protocol ``cpu16v2``: ReCo's case as a reviewer checks it (issue 23).

    # choose, on held-out images
    python benchmarks/quality.py run --protocol cpu16v2 --cells val --jobs 2
    # what validation chose
    python benchmarks/quality.py decide --protocol cpu16v2
    # final cells, 3 seeds
    python benchmarks/quality.py run --protocol cpu16v2 --cells test --jobs 2
    python benchmarks/quality.py run --protocol cpu16v2 --cells equal-compute,long,32px
    python benchmarks/quality.py report --protocol cpu16v2 --docs

The training settings are ``cpu16``'s (16 px, ResNet-18 at width 16, batch 256, 20 epochs,
per-image views in the main process), plus ``diagnostics.term_grad_steps=2``: two steps per
epoch log the backbone's gradient norm from each loss term alone. Validation cells train
under bf16 autocast, every test-split cell in float32 (:data:`TEST_PRECISION` says why).
What changes is the order of work, which this module enforces:

1. **Validation cells** (``val-<method>-<setting>-s<seed>``, seeds 0 and 1) train on 20,000
   training images and measure on the other 5,000 (``split: trainval``); the test images are
   not in their data folder at all. Each setting changes one choice against the shipped
   default (:data:`SETTINGS`).
2. **The choice** of each method is the ReCo-on setting with the highest mean validation kNN
   over both seeds (:func:`validation_choice`).
3. **Test cells** (``test-...``, the 10,000 test images) with ReCo on refuse to start unless
   every validation cell of their method is committed and the ReCo settings they would run
   (the shipped defaults, resolved by composing the CLI's config) are the chosen setting's.
   ReCo-off cells involve no ReCo choice and may run at any time.

Cells run a pinned commit, not the working tree: :data:`VAL_CODE` for validation cells and
:data:`TEST_CODE` for test cells, each unpacked once (``git archive``) under
``benchmark_runs/code/`` and imported from there (``PYTHONPATH``; the dependencies are this
interpreter's). So development on main can go on while cells run, a resumed cell runs the
code it started with, and every cell of a group runs the same code. Every cell records that
commit, its split and data folder, its exact overrides, the resolved ReCo settings, and per
epoch the kNN and the terms' values, weights and gradient shares. A result file is written
once, when its cell ends, and never edited: a changed meaning gets a new cell name.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = "cpu16v2"
RESULTS = ROOT / "benchmarks" / "results" / "quality" / PROTOCOL
RUNS = ROOT / "benchmark_runs" / "quality" / PROTOCOL
#: where the pinned commits are unpacked
CODE_TREES = ROOT / "benchmark_runs" / "code"
#: the code every validation cell runs: the commit that added this protocol (its training
#: code is that of 8b48e80, which added reco.scale and diagnostics.term_grad_steps)
VAL_CODE = "960070b3c194057dc429cef5fa71a376ebb832ca"
#: the code the test cells run: a commit whose shipped defaults are what validation chose
#: (``check_test_cell`` verifies it) and whose last.ckpt is the last epoch (RunCheckpoints,
#: 65641ed or later; :func:`code_for` verifies it); set on 2026-12-07, when validation was
#: complete: the commit that shipped SimCLR's Mixup, the last of the three methods' choices
TEST_CODE: str | None = "7d805822da2f7eb9aa2ab86b7f889c072bfc18b0"

PROTOCOL_OVERRIDES = [
    "dataset=imagefolder",
    "dataset.image_size=16",
    "backbone.width=16",
    "dataset.batch_size=256",
    "trainer.precision={precision}",  # the split's: VAL_PRECISION or TEST_PRECISION
    "trainer.max_epochs=20",
    "dataset.num_workers=0",
    "dataset.pin_memory=false",
    "trainer.enable_progress_bar=false",
    "pictures=false",
    "diagnostics.term_grad_steps=2",
]
#: the precision of the validation cells: bf16 autocast, which the machine they ran on
#: (AVX-512 with BF16) computed natively
VAL_PRECISION = "bf16-mixed"
#: the precision of every test-split cell (test grid, equal compute, 60 epochs, 32 px):
#: float32. Set on 2026-12-07, before any test cell had landed, for the hardware: a machine
#: without BF16 instructions (this session's, an AVX2 AMD EPYC) emulates bf16 and took
#: 14.1 s for a MoCo step that float32 does in 0.65 s (``step_cost.py --methods moco
#: --precision bf16`` against ``--precision 32``, model work only, one thread), and
#: float32 runs everywhere. One precision for every test-split cell, so that each of their
#: comparisons (on against off, equal compute, 60 epochs, 32 px) is within one precision;
#: validation's choices were made under bf16 (docs/benchmarks.md says so).
TEST_PRECISION = "32-true"
METHODS = ("moco", "simclr", "byol")
VAL_SEEDS = (0, 1)
TEST_SEEDS = (0, 1, 2)

#: the mixing that is not the method's ``reco.mix=auto`` choice (MoCo and BYOL: Mixup)
OTHER_MIX = {"moco": "cutmix", "simclr": "mixup", "byol": "cutmix"}


def settings(method: str) -> dict[str, tuple[str, ...] | None]:
    """The validation settings of ``method``: name -> overrides (``None``: ReCo off). Each
    changes one choice against the shipped defaults, in the order the lanes run them."""
    chosen: dict[str, tuple[str, ...] | None] = {
        "off": None,
        "default": (),
        "scale-relative": ("reco.scale=relative",),
        # added 2026-12-07, before any cell of it ran, and run next: larger weights
        # (``scale-relative`` weighs SimCLR's terms about 0.7, BYOL's 0.05, MoCo's 1)
        "weights-2": ("reco.w_global=2", "reco.w_local=2"),
        f"mix-{OTHER_MIX[method]}": (f"reco.mix={OTHER_MIX[method]}",),
        "negatives-batch": ("reco.negatives=batch",),
        "warmup-0": ("reco.warmup_epochs=0",),
        "global-only": ("reco.w_local=0",),
        "local-only": ("reco.w_global=0",),
    }
    if method == "simclr":  # its teacher: ReCo's EMA copy (auto) or the online network
        chosen["teacher-online"] = ("reco.teacher=online",)
    return chosen


#: Equal compute: ReCo off trains 20 x (whole-step cost ratio on/off) epochs, at the test
#: cells' precision (:data:`TEST_PRECISION`). The ratios, measured 2026-12-07 on a quiet
#: machine (AVX2, no BF16) at the protocol's settings, data included:
#: ``OMP_NUM_THREADS=1 python benchmarks/step_cost.py --threads 1 --methods moco simclr byol
#: --width 16 --image-size 16 --batch-size 256 --precision 32 --rounds 5 --data
#: ../shared/data/cifar10``: MoCo 1,481/2,286 ms (1.54), SimCLR 1,603/2,706 (1.69), BYOL
#: 2,126/3,288 (1.55). (Under bf16 on an AVX-512 BF16 machine, 2026-12-06: 1.44, 1.48, 1.41.)
STEP_COST_RATIO = {"moco": 1.54, "simclr": 1.69, "byol": 1.55}
EQUAL_COMPUTE_EPOCHS = {method: round(20 * ratio) for method, ratio in STEP_COST_RATIO.items()}


@dataclass(frozen=True)
class Cell:
    """One training run of the protocol."""

    name: str
    method: str
    reco: bool
    seed: int
    overrides: tuple[str, ...] = field(default=())
    split: str = "test"  # "trainval": 20,000/5,000 of train/; "test": train/ and test/
    setting: str | None = None  # the validation setting
    code: str | None = None  # a pinned commit of its own (None: its group's, see code_for)

    def protocol_overrides(self) -> list[str]:
        """The protocol's settings for this cell: :data:`PROTOCOL_OVERRIDES` and its split's
        precision."""
        precision = VAL_PRECISION if self.split == "trainval" else TEST_PRECISION
        return [override.format(precision=precision) for override in PROTOCOL_OVERRIDES]

    def arguments(self, data_root: str) -> list[str]:
        """The CLI's overrides, without the run directory (recorded as they are)."""
        return [
            f"+method={self.method}",
            f"+reco={'on' if self.reco else 'off'}",
            *self.protocol_overrides(),
            f"dataset.root={data_root}",
            f"seed={self.seed}",
            *self.overrides,
        ]


def val_cells(method: str | None = None) -> list[Cell]:
    """Validation cells, in the lanes' order: off and default of every method and seed
    first (the measured gain and the terms' logs), then one alternative at a time."""
    methods = METHODS if method is None else (method,)
    order: list[str] = []
    for m in methods:
        order += [name for name in settings(m) if name not in order]
    cells = []
    for rank in (("off", "default"), tuple(n for n in order if n not in ("off", "default"))):
        for name in rank:
            for seed in VAL_SEEDS:
                for m in methods:
                    if name in settings(m):
                        overrides = settings(m)[name]
                        cells.append(
                            Cell(
                                f"val-{m}-{name}-s{seed}",
                                m,
                                overrides is not None,
                                seed,
                                overrides or (),
                                "trainval",
                                name,
                            )
                        )
    return cells


def test_cells() -> list[Cell]:
    """The headline grid: every method off and on, shipped defaults, three seeds."""
    return [
        Cell(f"test-{m}-{'on' if reco else 'off'}-s{seed}", m, reco, seed)
        for seed in TEST_SEEDS
        for m in METHODS
        for reco in (False, True)
    ]


def equal_compute_cells() -> list[Cell]:
    """ReCo off for as many epochs as cost what 20 epochs of ReCo on cost (two seeds)."""
    return [
        Cell(
            f"test-{m}-off-ec{EQUAL_COMPUTE_EPOCHS[m]}-s{seed}",
            m,
            False,
            seed,
            (f"trainer.max_epochs={EQUAL_COMPUTE_EPOCHS[m]}",),
        )
        for seed in (0, 1)
        for m in METHODS
    ]


def long_cells() -> list[Cell]:
    """60 epochs (3x), seed 0: does the gap grow, hold or close?"""
    return [
        Cell(f"test-{m}-{'on' if reco else 'off'}-e60-s0", m, reco, 0, ("trainer.max_epochs=60",))
        for m in METHODS
        for reco in (False, True)
    ]


def px32_cells() -> list[Cell]:
    """The CIFAR images' own 32 px at about the same compute (width 8), 20 epochs, seed 0."""
    return [
        Cell(
            f"test-{m}-{'on' if reco else 'off'}-32px-s0",
            m,
            reco,
            0,
            ("dataset.image_size=32", "backbone.width=8"),
        )
        for m in METHODS
        for reco in (False, True)
    ]


#: the code of the Barlow Twins cells: the commit that added the method (issue 24)
BARLOW_CODE: str | None = "3a06192270e940fa4731ef5885abb701a251548d"


def barlow_cells() -> list[Cell]:
    """Barlow Twins off and on, seed 0, validation split: the fifth method's quality (issue
    24 asks for one seed); not part of the headline grid. Its code is :data:`BARLOW_CODE`."""
    if BARLOW_CODE is None:
        return []
    return [
        Cell(
            f"val-barlow-{name}-s0",
            "barlow",
            name == "default",
            0,
            (),
            "trainval",
            name,
            BARLOW_CODE,
        )
        for name in ("off", "default")
    ]


def groups() -> dict[str, list[Cell]]:
    chosen = {
        "val": val_cells(),
        "test": test_cells(),
        "equal-compute": equal_compute_cells(),
        "long": long_cells(),
        "32px": px32_cells(),
    }
    chosen.update({f"val-{m}": val_cells(m) for m in METHODS})
    chosen["barlow"] = barlow_cells()
    return chosen


# --------------------------------------------------------------------------- pinned code
class CellRefused(Exception):
    """A cell that must not run now, with the reason and what to do."""


def git(*arguments: str) -> str:
    return subprocess.run(
        ["git", *arguments], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()


def code_for(cell: Cell) -> str:
    """The commit ``cell`` runs."""
    if cell.code is not None:
        return cell.code
    if cell.split == "trainval":
        return VAL_CODE
    if TEST_CODE is None:
        raise CellRefused(
            "no TEST_CODE yet: once validation is complete, commit its choices as the shipped "
            "defaults and set quality_v2.TEST_CODE to that commit"
        )
    written_each_epoch = subprocess.run(
        ["git", "grep", "-q", "class RunCheckpoints", TEST_CODE, "--", "src"],
        cwd=ROOT,
        check=False,
    )
    if written_each_epoch.returncode != 0:
        raise CellRefused(
            f"TEST_CODE {TEST_CODE[:10]} predates RunCheckpoints: its last.ckpt is the best "
            "epoch by the monitored kNN, which on the test split is a pick on the test images; "
            "choose a commit at or after 65641ed"
        )
    return TEST_CODE


def code_tree(commit: str) -> Path:
    """``commit`` unpacked under :data:`CODE_TREES` (once; built aside and renamed into place,
    so two lanes never see half a tree). ``src/reco_lightning/conf`` links to ``conf/``, as
    the package's install maps it."""
    tree = CODE_TREES / commit
    if tree.is_dir():
        return tree
    CODE_TREES.mkdir(parents=True, exist_ok=True)
    import tempfile

    building = Path(tempfile.mkdtemp(prefix=f"{commit[:10]}.", dir=CODE_TREES))
    archive = subprocess.run(
        ["git", "archive", commit], cwd=ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(building)], input=archive, check=True)
    (building / "src" / "reco_lightning" / "conf").symlink_to(Path("..") / ".." / "conf")
    try:
        building.rename(tree)
    except OSError:  # another lane got there first
        import shutil

        shutil.rmtree(building)
    return tree


def code_env(tree: Path | None) -> dict[str, str]:
    """The environment of a cell's processes: one thread, the pinned tree's package first."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(tree / "src"), *filter(None, [env.get("PYTHONPATH")])]
        )
    return env


#: what a cell's training depends on
TRAINING_PATHS = ("src", "conf", "pyproject.toml")


def same_training_code(first: str, second: str) -> bool:
    """Whether two commits hold the same training code (a resume may cross a commit that
    changed only docs or benchmarks)."""
    return (
        first == second
        or subprocess.run(
            ["git", "diff", "--quiet", first, second, "--", *TRAINING_PATHS], cwd=ROOT
        ).returncode
        == 0
    )


def committed(path: Path) -> bool:
    """Whether ``path`` is in HEAD and unchanged in the tree."""
    relative = str(path.relative_to(ROOT))
    tracked = subprocess.run(
        ["git", "ls-files", "--error-unmatch", relative], cwd=ROOT, capture_output=True
    )
    return tracked.returncode == 0 and not git("status", "--porcelain", "--", relative)


# --------------------------------------------------------------------------- ReCo settings
#: composes a cell's config as the CLI does and prints its resolved ``reco`` group as JSON
_RESOLVE = """
import json, sys
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from reco_lightning.methods import METHODS
method, overrides = sys.argv[1], json.loads(sys.argv[2])
with initialize_config_module(config_module="reco_lightning.conf", version_base="1.3"):
    cfg = compose(config_name="config", overrides=overrides)
reco = OmegaConf.to_container(cfg.reco, resolve=True)
if reco.get("mix") == "auto":
    reco["mix"] = METHODS[method].reco_mix
if reco.get("scale") == "auto":
    reco["scale"] = getattr(METHODS[method], "reco_scale", "absolute")
if reco.get("negatives") == "auto":
    reco["negatives"] = getattr(METHODS[method], "reco_negatives", "queue")
if reco.get("warmup_epochs") is None:
    reco["warmup_epochs"] = getattr(METHODS[method], "reco_warmup_epochs", 2.0)
for key, weight in zip(("w_global", "w_local"), getattr(METHODS[method], "reco_weights", (1, 1))):
    if reco.get(key) is None:
        reco[key] = float(weight)
if reco.get("teacher") == "auto":
    reco["teacher"] = getattr(METHODS[method], "reco_teacher", "auto")
print(json.dumps(reco))
"""


def resolved_reco(cell: Cell, data_root: str, tree: Path | None = None) -> dict[str, Any] | None:
    """The ReCo settings ``cell`` trains with under the code of ``tree`` (None: the installed
    package), resolved as the CLI composes them: ``mix``, ``scale``, ``negatives`` and ``teacher``
    ``auto`` and ``warmup_epochs``, ``w_global`` and ``w_local`` null made the method's
    choices; None when ReCo is off."""
    if not cell.reco:
        return None
    command = [sys.executable, "-c", _RESOLVE, cell.method, json.dumps(cell.arguments(data_root))]
    if tree is None:  # in this process (tests): the namespace of a fresh interpreter
        namespace: dict[str, Any] = {}
        import contextlib
        import io

        argv, sys.argv = sys.argv, command[2:]
        try:
            with contextlib.redirect_stdout(io.StringIO()) as printed:
                exec(_RESOLVE, namespace)
        finally:
            sys.argv = argv
        return json.loads(printed.getvalue())
    out = subprocess.run(
        command, env=code_env(tree), cwd=ROOT, check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout)


@dataclass
class Choice:
    """What validation chose for one method."""

    method: str
    means: dict[str, float]  # setting -> mean validation kNN over VAL_SEEDS (complete settings)
    missing: list[str]  # validation cells without a result
    uncommitted: list[str]  # result files not in HEAD as they are
    best: str | None = None
    reco: dict[str, Any] | None = None  # the best setting's resolved ReCo settings


def validation_score(result: dict) -> float:
    """What validation compares: the kNN of the cell's last epoch on the 5,000 validation
    images, as the run measured it (its ``curve``).

    Not ``final_knn``: under :data:`VAL_CODE` the evaluated ``last.ckpt`` was the epoch of
    the highest monitored kNN, not the last (Lightning 2.6's ``save_last`` writes it only on
    epochs that improve the monitor; fixed with ``RunCheckpoints``), so ``final_knn`` of a
    validation cell is a best-of-20-epochs pick on the very images it reports. The last
    epoch's value involves no pick.
    """
    return float(result["curve"][-1]["knn"])


def validation_choice(method: str, results: dict[str, dict]) -> Choice:
    """The ReCo-on setting of ``method`` with the highest mean validation score
    (:func:`validation_score`)."""
    names = [cell.name for cell in val_cells(method)]
    missing = [name for name in names if name not in results]
    uncommitted = [
        name for name in names if name in results and not committed(RESULTS / f"{name}.json")
    ]
    means = {}
    for setting in settings(method):
        runs = [results.get(f"val-{method}-{setting}-s{seed}") for seed in VAL_SEEDS]
        if all(runs):
            means[setting] = statistics.mean(validation_score(r) for r in runs)  # type: ignore[arg-type]
    choice = Choice(method, means, missing, uncommitted)
    candidates = {name: value for name, value in means.items() if name != "off"}
    if candidates:
        choice.best = max(candidates, key=candidates.__getitem__)
        choice.reco = results[f"val-{method}-{choice.best}-s0"]["reco_config"]
    return choice


def check_test_cell(
    cell: Cell, data_root: str, results: dict[str, dict], tree: Path | None = None
) -> None:
    """Refuse a test cell with ReCo on that validation has not cleared (module docstring);
    ``tree``: the code it would run (None: the installed package)."""
    if cell.split != "test" or not cell.reco:
        return
    choice = validation_choice(cell.method, results)
    if choice.missing:
        raise CellRefused(
            f"validation of {cell.method} is not complete ({len(choice.missing)} cells missing, "
            f"e.g. {choice.missing[0]}): run --cells val-{cell.method} first"
        )
    if choice.uncommitted:
        raise CellRefused(
            f"validation results of {cell.method} are not committed "
            f"({', '.join(choice.uncommitted)}): commit them, then the defaults they choose, "
            "before any test cell"
        )
    ours = resolved_reco(cell, data_root, tree)
    if ours != choice.reco:
        differ = sorted(
            k
            for k in set(ours or {}) | set(choice.reco or {})
            if (ours or {}).get(k) != (choice.reco or {}).get(k)
        )
        raise CellRefused(
            f"{cell.name} would train with ReCo settings that validation did not choose "
            "(differing: "
            + ", ".join(
                f"{k}={(ours or {}).get(k)!r} against {(choice.reco or {}).get(k)!r}"
                for k in differ
            )
            + f"); validation chose {cell.method}'s '{choice.best}': make it the shipped "
            f"default in the method's class ({'; '.join(class_attributes(ours, choice.reco))}) "
            "and commit it"
        )


# --------------------------------------------------------------------------- running
def read_epochs(run_dir: Path) -> dict[int, dict[str, str]]:
    """Every logged value of each epoch, from ``metrics.csv`` and the ``metrics-N.csv`` parts
    earlier runs of a resumed cell left, oldest first (a rerun epoch keeps its newer values)."""
    import csv

    parts = sorted(run_dir.glob("metrics-*.csv"), key=lambda path: int(path.stem.split("-")[1]))
    epochs: dict[int, dict[str, str]] = {}
    for path in [*parts, run_dir / "metrics.csv"]:
        if not path.is_file():
            continue
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                if row.get("epoch"):
                    epochs.setdefault(int(row["epoch"]), {}).update(
                        {k: v for k, v in row.items() if v != ""}
                    )
    return epochs


#: the line Lightning writes to the log each time a run continues from a checkpoint
RESTORED = "Restored all states from the checkpoint"

#: per-epoch term logs a result keeps: the metrics.csv column -> the result's key
TERM_COLUMNS = {
    "train/loss_method_epoch": "loss_method",
    "train/loss_global_epoch": "loss_global",
    "train/loss_local_epoch": "loss_local",
    "train/loss_epoch": "loss",
    "train/reco_w_global": "w_global",
    "train/reco_w_local": "w_local",
    "train/reco_global_skipped": "global_skipped",
    "train/reco_local_skipped": "local_skipped",
    **{
        f"train/grad_{kind}_{term}": f"grad_{kind}_{term}"
        for kind in ("norm", "share")
        for term in ("method", "global", "local")
    },
}


def curve_and_terms(run_dir: Path) -> tuple[list[dict[str, float | None]], list[dict[str, float]]]:
    epochs = read_epochs(run_dir)
    curve, terms = [], []
    for epoch in sorted(epochs):
        row = epochs[epoch]
        if "val/knn_acc" in row:
            seconds = row.get("time/train_s")
            curve.append(
                {
                    "epoch": epoch + 1,
                    "knn": float(row["val/knn_acc"]),
                    "train_s": float(seconds) if seconds else None,
                }
            )
        logged = {key: float(row[column]) for column, key in TERM_COLUMNS.items() if column in row}
        if logged:
            terms.append({"epoch": epoch + 1, **logged})
    return curve, terms


def train_and_evaluate(train_command: list[str], run_dir: Path, env: dict[str, str]) -> None:
    """Train (or resume) with ``train_command``, then evaluate the run's last checkpoint with
    ``python -m reco_lightning.eval``; both append to ``run_dir/train.log``."""
    evaluate = [
        sys.executable,
        "-m",
        "reco_lightning.eval",
        f"checkpoint={run_dir}",
        "map.enabled=false",
        "progress=false",
    ]
    with open(run_dir / "train.log", "a") as log:
        for command in (train_command, evaluate):
            subprocess.run(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, check=True, cwd=ROOT
            )


def run_cell(cell: Cell, data: Path, trainval_root: Any) -> dict:
    """Train (or resume) and evaluate ``cell`` under its pinned code; write its result file
    once, at the end."""
    result_file = RESULTS / f"{cell.name}.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    root = trainval_root(data) if cell.split == "trainval" else data
    data_root = os.path.relpath(root, ROOT)
    commit = code_for(cell)
    tree = code_tree(commit)
    check_test_cell(cell, data_root, load_results(), tree)
    run_dir = RUNS / cell.name
    run_dir.mkdir(parents=True, exist_ok=True)
    started = run_dir / "commit.txt"
    if started.is_file():
        first = started.read_text().strip()
        if not same_training_code(first, commit):
            raise CellRefused(
                f"{cell.name} started under commit {first[:10]}, whose {', '.join(TRAINING_PATHS)} "
                f"differ from those of {commit[:10]}, which its group now runs: delete {run_dir} "
                "to start it again"
            )
        commit = first
    else:
        started.write_text(commit + "\n")
    reco = resolved_reco(cell, data_root, tree)
    env = code_env(tree)
    train_and_evaluate(
        [
            sys.executable,
            "-m",
            "reco_lightning",
            *cell.arguments(data_root),
            f"hydra.run.dir={run_dir}",
            "resume=auto",
        ],
        run_dir,
        env,
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    evaluation = json.loads((run_dir / "eval.json").read_text())
    curve, terms = curve_and_terms(run_dir)
    result = {
        "cell": cell.name,
        "protocol": PROTOCOL,
        "commit": commit,
        "split": cell.split,
        "data_root": data_root,
        "method": cell.method,
        "reco": cell.reco,
        "setting": cell.setting,
        "seed": cell.seed,
        "protocol_overrides": cell.protocol_overrides(),
        "overrides": list(cell.overrides),
        "command": ["python", "-m", "reco_lightning", *cell.arguments(data_root), "resume=auto"],
        # how often training continued from a checkpoint (Lightning logs each restore to
        # train.log, which every run of the cell appends to); 0 = trained in one go. Until
        # 2026-12-06 this counted metrics-N.csv parts, which the pinned code never leaves,
        # so val-simclr-default-s0 records 0 although it was resumed once (its train.log).
        "resumed": (run_dir / "train.log").read_text().count(RESTORED),
        "reco_config": reco,
        "epochs": summary["epochs"],
        "train_time_s": round(curve[-1]["train_s"], 1) if curve and curve[-1]["train_s"] else None,
        "knn_random_init": summary["knn_acc_random_init"],
        "curve": curve,
        "terms": terms,
        "final_knn": evaluation["knn"]["top1"],
        "final_linear": evaluation.get("linear", {}).get("top1"),
    }
    result_file.parent.mkdir(parents=True, exist_ok=True)
    temporary = result_file.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(result, indent=2) + "\n")
    temporary.rename(result_file)
    return result


def load_results() -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(RESULTS.glob("*.json"))}


# --------------------------------------------------------------------------- reporting
def pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def spread(values: list[float]) -> str:
    """``mean ± sd`` in points (sd over seeds; ``±—`` for one seed)."""
    mean = 100 * statistics.mean(values)
    sd = f"{100 * statistics.stdev(values):.2f}" if len(values) > 1 else "—"
    return f"{mean:.2f} ± {sd}"


def report_validation(results: dict[str, dict]) -> None:
    print(
        "| method | setting | overrides | kNN per seed (val 5,000, last epoch) | kNN mean | "
        "vs default, per seed | eval of last.ckpt (best epoch), mean | linear mean | chosen |"
    )
    print("| --- | --- | --- | --- | ---: | --- | ---: | ---: | --- |")
    for method in METHODS:
        choice = validation_choice(method, results)
        for setting, overrides in settings(method).items():
            runs = [results.get(f"val-{method}-{setting}-s{seed}") for seed in VAL_SEEDS]
            done = [r for r in runs if r]
            if not done:
                continue
            defaults = [results.get(f"val-{method}-default-s{seed}") for seed in VAL_SEEDS]
            paired = [
                f"{100 * (validation_score(r) - validation_score(d)):+.2f}"
                for r, d in zip(runs, defaults)
                if r and d
            ]
            linear = [r["final_linear"] for r in done if r.get("final_linear") is not None]
            label = "ReCo off" if overrides is None else " ".join(overrides) or "(shipped defaults)"
            print(
                f"| {method} | {setting} | {label} | "
                f"{' / '.join(pct(validation_score(r)) for r in done)} | "
                f"{pct(statistics.mean(validation_score(r) for r in done))} | "
                f"{' / '.join(paired) or '—'} | "
                f"{pct(statistics.mean(r['final_knn'] for r in done))} | "
                f"{pct(statistics.mean(linear)) if linear else '—'} | "
                f"{'**chosen**' if setting == choice.best and not choice.missing else ''} |"
            )


def report_terms(results: dict[str, dict]) -> None:
    """The terms at the last epoch of each method's validation default and scale-relative
    cells (mean of the seeds): values, weights in effect, and gradient shares."""
    print(
        "| method | setting | loss method | loss global | loss local | w global | w local | "
        "grad share method / global / local | grad norm method |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    for method in METHODS:
        for setting in ("off", "default", "scale-relative"):
            last = [
                results[name]["terms"][-1]
                for seed in VAL_SEEDS
                if (name := f"val-{method}-{setting}-s{seed}") in results and results[name]["terms"]
            ]
            if not last:
                continue

            def mean(key: str) -> str:
                values = [t[key] for t in last if key in t]
                return f"{statistics.mean(values):.3g}" if values else "—"

            shares = " / ".join(mean(f"grad_share_{t}") for t in ("method", "global", "local"))
            print(
                f"| {method} | {setting} | {mean('loss_method')} | {mean('loss_global')} | "
                f"{mean('loss_local')} | {mean('w_global')} | {mean('w_local')} | {shares} | "
                f"{mean('grad_norm_method')} |"
            )


def report_test(
    results: dict[str, dict], suffix: str = "", seeds: tuple[int, ...] = TEST_SEEDS
) -> None:
    print(
        "| method | kNN off (mean ± sd) | kNN on (mean ± sd) | on − off per seed | "
        "on − off (mean ± sd) | linear off | linear on | seeds |"
    )
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for method in METHODS:
        pairs = [
            (
                results.get(f"test-{method}-off{suffix}-s{s}"),
                results.get(f"test-{method}-on{suffix}-s{s}"),
            )
            for s in seeds
        ]
        pairs = [(off, on) for off, on in pairs if off and on]
        if not pairs:
            continue
        diffs = [on["final_knn"] - off["final_knn"] for off, on in pairs]
        print(
            f"| {method} | {spread([off['final_knn'] for off, _ in pairs])} | "
            f"{spread([on['final_knn'] for _, on in pairs])} | "
            f"{' / '.join(f'{100 * d:+.2f}' for d in diffs)} | "
            f"{spread(diffs)} | {spread([off['final_linear'] for off, _ in pairs])} | "
            f"{spread([on['final_linear'] for _, on in pairs])} | {len(pairs)} |"
        )


def report_equal_compute(results: dict[str, dict]) -> None:
    print(
        "| method | cost ratio on/off (step, data included) | ReCo off epochs | "
        "kNN off, equal compute | kNN on, 20 epochs | on − off per seed |"
    )
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for method in METHODS:
        epochs = EQUAL_COMPUTE_EPOCHS[method]
        pairs = [
            (
                results.get(f"test-{method}-off-ec{epochs}-s{s}"),
                results.get(f"test-{method}-on-s{s}"),
            )
            for s in (0, 1)
        ]
        pairs = [(off, on) for off, on in pairs if off and on]
        if not pairs:
            continue
        diffs = " / ".join(
            f"{100 * (on['final_knn'] - off['final_knn']):+.2f}" for off, on in pairs
        )
        print(
            f"| {method} | {STEP_COST_RATIO[method]:.2f} | {epochs} | "
            f"{spread([off['final_knn'] for off, _ in pairs])} | "
            f"{spread([on['final_knn'] for _, on in pairs])} | {diffs} |"
        )


def report_long_and_32px(results: dict[str, dict]) -> None:
    print(
        "| method | run | kNN off | kNN on | on − off | linear off | linear on | "
        "gap at epochs 5 / 10 / 20 / last |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for label, suffix in (("60 epochs", "-e60"), ("32 px, width 8", "-32px")):
        for method in METHODS:
            off, on = (
                results.get(f"test-{method}-off{suffix}-s0"),
                results.get(f"test-{method}-on{suffix}-s0"),
            )
            if not (off and on):
                continue
            knn = {r["reco"]: {p["epoch"]: p["knn"] for p in r["curve"]} for r in (off, on)}
            marks = [e for e in (5, 10, 20, off["epochs"]) if e in knn[True] and e in knn[False]]
            gaps = " / ".join(f"{100 * (knn[True][e] - knn[False][e]):+.2f}" for e in marks)
            print(
                f"| {method} | {label}, seed 0 | {pct(off['final_knn'])} | "
                f"{pct(on['final_knn'])} | {100 * (on['final_knn'] - off['final_knn']):+.2f} | "
                f"{pct(off['final_linear'])} | {pct(on['final_linear'])} | {gaps} |"
            )


#: the class attribute of a method that holds its own value of each ReCo setting
CLASS_ATTRIBUTE = {
    "mix": "reco_mix",
    "scale": "reco_scale",
    "negatives": "reco_negatives",
    "teacher": "reco_teacher",
    "warmup_epochs": "reco_warmup_epochs",
}


def class_attributes(ours: dict[str, Any] | None, chosen: dict[str, Any] | None) -> list[str]:
    """What to write in the method's class so that the settings ``ours`` (the shipped
    defaults, resolved) become ``chosen``: ``reco_negatives = 'batch'``, say."""
    ours, chosen = ours or {}, chosen or {}
    lines = [
        f"{attribute} = {chosen[key]!r}"
        for key, attribute in CLASS_ATTRIBUTE.items()
        if ours.get(key) != chosen.get(key)
    ]
    weights = ("w_global", "w_local")
    if any(ours.get(key) != chosen.get(key) for key in weights):
        lines.append(f"reco_weights = {tuple(float(chosen[key]) for key in weights)!r}")
    other = sorted(
        key
        for key in set(ours) | set(chosen)
        if key not in CLASS_ATTRIBUTE and key not in weights and ours.get(key) != chosen.get(key)
    )
    return lines + [
        f"reco.{key}: {ours.get(key)!r} -> {chosen.get(key)!r} (no attribute)" for key in other
    ]


def report_choices(results: dict[str, dict]) -> None:
    for method in METHODS:
        choice = validation_choice(method, results)
        state = (
            f"{len(choice.missing)} of {len(val_cells(method))} validation cells missing, "
            f"leading: '{choice.best}'"
            if choice.missing
            else f"chosen: '{choice.best}'"
        )
        default = results.get(f"val-{method}-default-s0")
        if choice.best is not None and default is not None:
            change = class_attributes(default["reco_config"], choice.reco)
            state += f" (as its default: {'; '.join(change) or 'nothing to change'})"
        ranked = ", ".join(
            f"{name} {pct(value)}"
            for name, value in sorted(choice.means.items(), key=lambda item: -item[1])
        )
        print(f"- {method}: {state}; mean validation kNN: {ranked or '—'}")


def report_barlow(results: dict[str, dict]) -> None:
    """Barlow Twins off and on, seed 0, validation split (issue 24's fifth method)."""
    print(
        "| cell | commit | kNN, last epoch (val 5,000) | eval of last.ckpt | linear | "
        "loss method / global / local, last epoch | grad share method / global / local |"
    )
    print("| --- | --- | ---: | ---: | ---: | --- | --- |")
    for cell in barlow_cells():
        result = results.get(cell.name)
        if result is None:
            continue
        last = (result.get("terms") or [{}])[-1]

        def three(prefix: str, digits: int) -> str:
            values = [last.get(f"{prefix}{name}") for name in ("method", "global", "local")]
            return " / ".join("—" if v is None else f"{v:.{digits}f}" for v in values)

        print(
            f"| {cell.name} | {result['commit'][:10]} | {pct(validation_score(result))} | "
            f"{pct(result['final_knn'])} | {pct(result['final_linear'])} | "
            f"{three('loss_', 2)} | {three('grad_share_', 3)} |"
        )


DOC_BLOCKS = {
    "v2-validation": report_validation,
    "v2-terms": report_terms,
    "v2-choices": report_choices,
    "v2-test": report_test,
    "v2-equal-compute": report_equal_compute,
    "v2-long": report_long_and_32px,
    "v2-barlow": report_barlow,
}


def report(results: dict[str, dict]) -> None:
    print(
        f"# Protocol {PROTOCOL}: {' '.join(PROTOCOL_OVERRIDES)}; precision: "
        f"{VAL_PRECISION} (validation), {TEST_PRECISION} (test split)\n"
    )
    for name, function in DOC_BLOCKS.items():
        print(f"## {name}\n")
        function(results)
        print()


def plot_curves(results: dict[str, dict], out_dir: Path) -> None:
    """kNN per epoch of each method's cells, ReCo off (blue) and on (red): the validation
    defaults (dotted), the test grid (one line per seed) and the 60-epoch and 32 px runs
    (thick), one figure per method: ``docs/img/quality_v2_<method>.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"val": ":", "test": "-", "e60": "-", "32px": "-."}
    for method in METHODS:
        runs = [
            (name, r)
            for name, r in results.items()
            if r["method"] == method
            and (r["setting"] in (None, "off", "default"))
            and "-ec" not in name
        ]
        if not runs:
            continue
        figure, axis = plt.subplots(figsize=(7, 4.5))
        for name, r in runs:
            kind = (
                "val"
                if r["split"] == "trainval"
                else "e60"
                if "-e60-" in name
                else "32px"
                if "-32px-" in name
                else "test"
            )
            epochs = [0] + [p["epoch"] for p in r["curve"]]
            knn = [r["knn_random_init"]] + [p["knn"] for p in r["curve"]]
            axis.plot(
                epochs,
                [100 * v for v in knn],
                styles[kind],
                color="tab:red" if r["reco"] else "tab:blue",
                linewidth=2.0 if kind in ("e60", "32px") else 1.0,
                alpha=0.9,
                label=f"{'on' if r['reco'] else 'off'}, {kind}, seed {r['seed']}",
            )
        axis.set_xlabel("epoch")
        axis.set_ylabel("kNN top-1 (%)")
        axis.set_title(f"{method}, {PROTOCOL}: val = 5,000 held-out training images, else test")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, ncol=2)
        figure.tight_layout()
        out_dir.mkdir(parents=True, exist_ok=True)
        figure.savefig(out_dir / f"quality_v2_{method}.png", dpi=100)
        plt.close(figure)
        print(f"wrote {out_dir / f'quality_v2_{method}.png'}")
