"""A fault table that stays true: every bad input a user can meet, run through the real CLI.

    python benchmarks/faults.py                          # every case; exit 1 if any fails
    python benchmarks/faults.py --out faults.md          # also write the markdown table
    python benchmarks/faults.py --only resume            # the cases whose name holds "resume"
    python benchmarks/faults.py --list                   # the case names, nothing run

The README promises that mistakes stop the run with one line that names the setting and
the fix, before training where they can be seen then (misspelt keys, out-of-range
values, a queue smaller than a global batch, a batch larger than the dataset, a missing
or empty image folder, a run directory that holds a run, contradicting resumes,
unreadable checkpoints...), and during training with the file's path (an unreadable image)
or the step and the term (a non-finite loss). This script checks each promise the way a
user meets it: every case is a subprocess of the command line (``python -m
reco_lightning ...`` or ``python -m reco_lightning.eval ...``), with ``OMP_NUM_THREADS=1``,
run in its own fresh temporary working directory (its cwd), and with tiny settings (a
width-8 ResNet-18 on 16 px digits, three steps) so that anything that does train ends in
seconds.

Fixtures, made once per script run in a temporary directory (lazily: ``--only`` makes only
what its cases need) and copied into a case's directory whenever the case may touch them:

* ``run/``: a finished tiny run, ``+method=moco +reco=on`` (``hydra.run.dir=run``);
* ``truncated.ckpt`` (the first half of the bytes of its ``checkpoints/last.ckpt``),
  ``empty.ckpt``, ``x.ckpt`` (a text file), ``foreign.ckpt`` (``torch.save`` of a dict
  that is no Lightning checkpoint);
* ``images/``: an image folder in the layout ``dataset=imagefolder`` reads,
  ``train/<class>/*.png`` and ``test/<class>/*.png`` (2 classes x 6 images, 16x16), and
  ``corrupt_images/``, the same with a file of garbage bytes named ``train/a/broken.png``;
  ``many_corrupt_images/`` has 2 x 60 training images and the broken one: at 224 px they
  pass the data module's 64 MiB cache of evaluation views, so the images are read in the
  preset's two loader worker processes, not in the main process.

For each case the table records: the exit code; the first line of the message on stderr
(the line starting with ``reco_lightning``, else the first non-empty line; when stderr
holds a traceback and no such line, the exception's line after it; the case's directory is
written ``CWD``, and this script's pid ``PID``, so the table is the same from run to run);
whether stderr holds a ``Traceback``; whether the message is one line (nothing non-empty
follows it on stderr); whether every file that existed in the case's directory before the
command (a prepared run directory included) is unchanged afterwards; and what the command
left behind.

A case PASSES when the exit code is 2, the message is one line, there is no traceback,
the existing files are unchanged and the failed command left nothing new behind (no
``outputs/`` directory, empty or not, and no other new file or directory). A case that
names what it must leave (``must_leave``: a sweep whose other job runs to the end although
one job fails) passes when those files exist instead: the sweep's directory is no leftover,
and its stderr holds a line for the failed job and one at the end.

What the comparison leaves out: files are compared by SHA-256 of their bytes, everywhere
in the case's directory except Hydra's own ``.hydra/`` folders and ``*.log`` files (Hydra
writes those into a run directory before our code runs, e.g. when a resume names the
directory with ``hydra.run.dir``); the same exclusion applies to what is "left behind".

Cases whose fault only exists on a machine without a GPU (``strategy=ddp``, ``device=cuda``)
are skipped where a GPU is present. The pass rule is the same for every case, those where
Hydra reports the mistake itself (``+method=swav``) included: the table says what happens.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

TRAIN = "reco_lightning"
EVAL = "reco_lightning.eval"

#: settings that make a run tiny (a few steps of a narrow network on 16 px digits), no method key
TINY_DATA = [
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
    "pictures=false",
]
#: the same with a method chosen
TINY = [*TINY_DATA, "method.proj_hidden_dim=64"]
#: what keeps an evaluation that does run short
EVAL_QUICK = [
    "progress=false",
    "linear.epochs=5",
    "map.enabled=false",
    "diagnostics.alignment_images=64",
]

#: a case's subprocess may run this long before it counts as a failure
CASE_TIMEOUT_S = 600
#: the message column is cut to this many characters
MESSAGE_CHARS = 110
#: the first line of an error message of ours
OUR_ERROR = re.compile(r"^reco_lightning(\.eval)?: error:")


# ----------------------------------------------------------------------------- fixtures
class Fixtures:
    """The shared inputs of the cases, each made on first use in ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @cached_property
    def run(self) -> Path:
        """A finished tiny MoCo + ReCo run."""
        argv = [sys.executable, "-m", TRAIN, "+method=moco", "+reco=on", *TINY, "hydra.run.dir=run"]
        print("fixture: training the tiny run ...", flush=True)
        done = subprocess.run(
            argv,
            cwd=self.root,
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=CASE_TIMEOUT_S,
        )
        run = self.root / "run"
        if done.returncode != 0 or not (run / "checkpoints" / "last.ckpt").is_file():
            sys.exit(
                f"faults.py: the fixture run failed (exit {done.returncode}):\n"
                f"{done.stderr[-3000:]}"
            )
        return run

    @cached_property
    def truncated(self) -> Path:
        data = (self.run / "checkpoints" / "last.ckpt").read_bytes()
        return self._write("truncated.ckpt", data[: len(data) // 2])

    @cached_property
    def empty(self) -> Path:
        return self._write("empty.ckpt", b"")

    @cached_property
    def text(self) -> Path:
        return self._write("x.ckpt", b"this is not a checkpoint\n")

    @cached_property
    def foreign(self) -> Path:
        """A readable torch file that is no Lightning training checkpoint."""
        import torch

        path = self.root / "foreign.ckpt"
        torch.save({"weights": torch.zeros(3)}, path)
        return path

    @cached_property
    def images(self) -> Path:
        return make_image_folder(self.root / "images")

    @cached_property
    def corrupt_images(self) -> Path:
        folder = self.root / "corrupt_images"
        shutil.copytree(self.images, folder)
        (folder / "train" / "a" / "broken.png").write_bytes(
            b"\x89PNG\r\n\x1a\n but not an image at all"
        )
        return folder

    @cached_property
    def many_corrupt_images(self) -> Path:
        """120 training images and a broken one: too many at 224 px for the evaluation-view cache,
        so the kNN bank is read by the loader's worker processes."""
        folder = make_image_folder(
            self.root / "many_corrupt_images", per_class=60, test_per_class=3
        )
        (folder / "train" / "a" / "broken.png").write_bytes(
            b"\x89PNG\r\n\x1a\n but not an image at all"
        )
        return folder

    @cached_property
    def gpu(self) -> bool:
        import torch

        return torch.cuda.is_available()

    def _write(self, name: str, data: bytes) -> Path:
        path = self.root / name
        path.write_bytes(data)
        return path


def make_image_folder(
    root: Path,
    classes: Sequence[str] = ("a", "b"),
    per_class: int = 6,
    test_per_class: int | None = None,
) -> Path:
    """``root/{train,test}/<class>/<i>.png``: small distinct 16x16 RGB images."""
    from PIL import Image

    for split, count in (
        ("train", per_class),
        ("test", per_class if test_per_class is None else test_per_class),
    ):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                image = Image.new("RGB", (16, 16), ((40 * i) % 256, 200 * c, (255 - 30 * i) % 256))
                for x in range(16):
                    image.putpixel((x, (x * (i + 1) + c) % 16), (255, 255, 255))
                image.save(folder / f"{i}.png")
    return root


# ----------------------------------------------------------------------------- setups
Setup = Callable[[Path, Fixtures], None]


def copy_run(dest: str = "run") -> Setup:
    """Copy the finished run into the case's directory as ``dest``."""

    def setup(cwd: Path, fx: Fixtures) -> None:
        shutil.copytree(fx.run, cwd / dest)

    return setup


def copy_fixture(attribute: str, dest: str) -> Setup:
    """Copy the fixture file or folder ``fx.<attribute>`` into the case's directory as ``dest``."""

    def setup(cwd: Path, fx: Fixtures) -> None:
        source: Path = getattr(fx, attribute)
        if source.is_dir():
            shutil.copytree(source, cwd / dest)
        else:
            shutil.copy2(source, cwd / dest)

    return setup


def make_paths(files: dict[str, bytes] | None = None, dirs: Sequence[str] = ()) -> Setup:
    """Create files (with their bytes) and empty directories in the case's directory."""

    def setup(cwd: Path, fx: Fixtures) -> None:
        for name in dirs:
            (cwd / name).mkdir(parents=True, exist_ok=True)
        for name, data in (files or {}).items():
            (cwd / name).parent.mkdir(parents=True, exist_ok=True)
            (cwd / name).write_bytes(data)

    return setup


def truncate_last_checkpoint(run: str = "run") -> Setup:
    """Copy the run, then cut its ``last.ckpt`` to half (a job killed while saving)."""

    def setup(cwd: Path, fx: Fixtures) -> None:
        copy_run(run)(cwd, fx)
        last = cwd / run / "checkpoints" / "last.ckpt"
        data = last.read_bytes()
        last.write_bytes(data[: len(data) // 2])

    return setup


class _Payload:
    """Unpickled, it opens ``payload-ran`` for writing: the file shows whether it ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - pickle's protocol
        return (open, (str(self.marker), "w"))


def crafted_checkpoint(dest: str) -> Setup:
    """A file shaped like a training checkpoint whose pickle runs code when opened unsafely
    (it would create ``payload-ran`` in the case's directory, which the table would list)."""

    def setup(cwd: Path, fx: Fixtures) -> None:
        import torch

        (cwd / dest).parent.mkdir(parents=True, exist_ok=True)
        payload = {"lr": _Payload(cwd / "payload-ran")}
        torch.save({"state_dict": {}, "hyper_parameters": payload}, cwd / dest)

    return setup


def edit_run_config(text: str, run: str = "run") -> Setup:
    """Copy the run, then add ``text`` to the top of its ``config.yaml``."""

    def setup(cwd: Path, fx: Fixtures) -> None:
        copy_run(run)(cwd, fx)
        config = cwd / run / "config.yaml"
        config.write_text(text + config.read_text())

    return setup


def locked_by_this_process(dest: str) -> Setup:
    """Make ``dest`` a run directory whose lock a live process holds: this script (its pid is
    alive while the case runs), in the package's lock format."""

    def setup(cwd: Path, fx: Fixtures) -> None:
        import json
        import socket

        from reco_lightning.run.run_dir import LOCK_FILE

        (cwd / dest).mkdir(parents=True, exist_ok=True)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": "earlier"}
        (cwd / dest / LOCK_FILE).write_text(json.dumps(record))

    return setup


class Unavailable(Exception):
    """A case this machine cannot set up (then it is skipped, with the reason)."""


def small_disk(dest: str, size: str = "4m") -> Setup:
    """Mount a ``size`` tmpfs at ``dest`` (the run directory's disk): it fills up during the
    run. Needs the right to mount (root); without it the case is skipped."""

    def setup(cwd: Path, fx: Fixtures) -> None:
        (cwd / dest).mkdir()
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(cwd / dest)],
            capture_output=True,
        )
        if mounted.returncode != 0:
            raise Unavailable(f"cannot mount a {size} tmpfs here")
        MOUNTED.append(cwd / dest)

    return setup


#: the file systems the cases mounted (unmounted when the script ends)
MOUNTED: list[Path] = []


def both(*setups: Setup) -> Setup:
    def setup(cwd: Path, fx: Fixtures) -> None:
        for one in setups:
            one(cwd, fx)

    return setup


# ----------------------------------------------------------------------------- cases
def key_of(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def tiny(*overrides: str, method: bool = True) -> list[str]:
    """``overrides`` followed by the tiny settings they do not replace."""
    keys = {key_of(o) for o in overrides}
    return [*overrides, *(o for o in (TINY if method else TINY_DATA) if key_of(o) not in keys)]


@dataclass
class Case:
    """One bad input: the command line (after ``python -m MODULE``) and what to prepare."""

    name: str
    argv: list[str]
    module: str = TRAIN
    setup: Setup | None = None
    #: the fault exists only on a machine without a GPU (skipped where there is one)
    cpu_only: bool = False
    #: files the command must leave (a sweep's finished job): then these count as no
    #: leftover, and the message need not be one line (see the module docstring)
    must_leave: tuple[str, ...] = ()
    #: paths the command may leave although it failed (a run stopped by a full disk keeps
    #: its directory and its last complete checkpoint); its message must still be one line
    may_leave: tuple[str, ...] = ()

    def shown(self) -> str:
        """The command without the tiny settings, for the table."""
        hidden = set(TINY) | set(EVAL_QUICK) | {f"++{o}" for o in TINY if o.startswith("method.")}
        tool = "train" if self.module == TRAIN else "eval"
        return " ".join([tool, *(a for a in self.argv if a not in hidden)])


MOCO = ("+method=moco",)
MOCO_RECO = ("+method=moco", "+reco=on")
FOLDER = ("dataset=imagefolder", "dataset.root=images", "dataset.num_workers=0")


def cases() -> list[Case]:
    """Every fault, in the order of the table."""
    run, images = copy_run(), copy_fixture("images", "images")
    return [
        # -- choosing the method and spelling the keys
        Case("no +method", tiny(method=False)),
        Case("unknown method (+method=swav)", tiny("+method=swav", method=False)),
        Case("misspelt key with + (+trainer.max_epoch=2)", tiny(*MOCO, "+trainer.max_epoch=2")),
        Case("misspelt key without + (trainer.max_epoch=2)", tiny(*MOCO, "trainer.max_epoch=2")),
        Case("misspelt reco key (reco.w_globl=1)", tiny(*MOCO_RECO, "reco.w_globl=1")),
        Case(
            "misspelt method key with + (+method.tempreature=0.5)",
            tiny(*MOCO, "+method.tempreature=0.5"),
        ),
        Case("value of the wrong type (knn.k=abc)", tiny(*MOCO, "knn.k=abc")),
        # -- ReCo's settings
        Case("reco.tau_student=0", tiny(*MOCO_RECO, "reco.tau_student=0")),
        Case("negative weight reco.w_local=-1", tiny(*MOCO_RECO, "reco.w_local=-1")),
        Case("reco.bank_size smaller than a global batch", tiny(*MOCO_RECO, "reco.bank_size=16")),
        Case("reco.mix=bogus", tiny(*MOCO_RECO, "reco.mix=bogus")),
        Case("reco.negatives=bogus", tiny(*MOCO_RECO, "reco.negatives=bogus")),
        Case("reco.teacher=bogus", tiny("+method=simclr", "+reco=on", "reco.teacher=bogus")),
        # -- the method's settings
        Case("MoCo queue smaller than a global batch", tiny(*MOCO, "method.queue_size=16")),
        Case("MoCo method.temperature=0", tiny(*MOCO, "method.temperature=0")),
        Case("BYOL method.momentum=1.5", tiny("+method=byol", "method.momentum=1.5")),
        Case("MoCo method.momentum_schedule=bogus", tiny(*MOCO, "method.momentum_schedule=bogus")),
        # -- backbone and optimizer
        Case("unknown backbone (backbone.name=resnet9)", tiny(*MOCO, "backbone.name=resnet9")),
        Case("backbone.width=6 (not a multiple of 4)", tiny(*MOCO, "backbone.width=6")),
        Case("unknown optimizer.name=adam", tiny(*MOCO, "optimizer.name=adam")),
        Case("optimizer.kernel=fused with LARS", tiny(*MOCO, "optimizer.kernel=fused")),
        Case("optimizer.lr=0", tiny(*MOCO, "optimizer.lr=0")),
        # -- the trainer
        Case("trainer.precision=bogus", tiny(*MOCO, "trainer.precision=bogus")),
        Case("trainer.devices=0", tiny(*MOCO, "trainer.devices=0")),
        Case("strategy=ddp without a GPU", tiny(*MOCO, "strategy=ddp"), cpu_only=True),
        # -- the data
        Case("dataset.batch_size=0", tiny(*MOCO, "dataset.batch_size=0")),
        Case("dataset.image_size=-1", tiny(*MOCO, "dataset.image_size=-1")),
        Case("dataset.augment_on=gpu", tiny(*MOCO, "dataset.augment_on=gpu")),
        Case(
            "dataset=cifar10 not downloaded",
            tiny(*MOCO, "dataset=cifar10", "dataset.num_workers=0"),
        ),
        Case("dataset=imagefolder without dataset.root", tiny(*MOCO, "dataset=imagefolder")),
        Case(
            "dataset.root a missing path",
            tiny(*MOCO, "dataset=imagefolder", "dataset.root=no/such/folder"),
        ),
        Case(
            "image folder without val/ or test/",
            tiny(*MOCO, *FOLDER, "dataset.batch_size=4"),
            setup=make_paths({"images/train/a/0.png": b""}),
        ),
        Case(
            "image folder whose class folders are empty",
            tiny(*MOCO, *FOLDER, "dataset.batch_size=4"),
            setup=make_paths(dirs=["images/train/a", "images/train/b", "images/test/a"]),
        ),
        Case("dataset.batch_size larger than the image folder", tiny(*MOCO, *FOLDER), setup=images),
        Case(
            "image folder with a corrupt image",
            tiny(*MOCO_RECO, *FOLDER, "dataset.batch_size=4"),
            setup=copy_fixture("corrupt_images", "images"),
        ),
        Case(
            "image folder with a corrupt image, read in 2 loader workers",
            tiny(
                *MOCO_RECO,
                "dataset=imagefolder",
                "dataset.root=images",
                "dataset.batch_size=4",
                "dataset.image_size=224",
            ),
            setup=copy_fixture("many_corrupt_images", "images"),
        ),
        Case("non-finite loss (optimizer.lr=1e30)", tiny(*MOCO, "optimizer.lr=1e30")),
        # -- values that are not numbers, or out of their range (schema.RANGES)
        Case("reco.w_global=nan", tiny(*MOCO_RECO, "reco.w_global=nan")),
        Case("reco.w_global=inf", tiny(*MOCO_RECO, "reco.w_global=inf")),
        Case("reco.tau_student=inf", tiny(*MOCO_RECO, "reco.tau_student=inf")),
        Case("optimizer.weight_decay=-1e-4", tiny(*MOCO, "optimizer.weight_decay=-1e-4")),
        Case("optimizer.warmup_epochs=-1", tiny(*MOCO, "optimizer.warmup_epochs=-1")),
        Case("optimizer.lr=-0.1 (named as given)", tiny(*MOCO, "optimizer.lr=-0.1")),
        Case("dataset.batch_size=1", tiny(*MOCO, "dataset.batch_size=1")),
        Case("seed=-1", tiny(*MOCO, "seed=-1")),
        Case("trainer.limit_train_batches=0", tiny(*MOCO, "trainer.limit_train_batches=0")),
        Case(
            "an image folder whose path is not ASCII, unquoted",
            tiny(*MOCO, "dataset=imagefolder", "dataset.root=bilder_äöü", "dataset.num_workers=0"),
            setup=copy_fixture("images", "bilder_äöü"),
        ),
        # -- run directories and resuming
        Case(
            "rerun into a finished run without resume",
            tiny(*MOCO_RECO, "hydra.run.dir=run"),
            setup=run,
        ),
        Case(
            "resume=RUN with +method=simclr",
            tiny("+method=simclr", "+reco=on", "resume=run"),
            setup=run,
        ),
        Case(
            "resume=RUN with +reco=off", tiny("+method=moco", "+reco=off", "resume=run"), setup=run
        ),
        Case(
            "resume=RUN with another backbone.width",
            tiny(*MOCO_RECO, "backbone.width=16", "resume=run"),
            setup=run,
        ),
        Case(
            "resume=RUN with another dataset.batch_size",
            tiny(*MOCO_RECO, "dataset.batch_size=16", "resume=run"),
            setup=run,
        ),
        Case(
            "a run directory whose name is 300 characters long",
            tiny(*MOCO_RECO, "hydra.run.dir=" + "d" * 300),
        ),
        Case(
            "a disk that fills during training (4 MiB tmpfs as run directory)",
            tiny(*MOCO_RECO, "hydra.run.dir=disk/run"),
            setup=small_disk("disk"),
            may_leave=("disk",),
        ),
        Case(
            "resume=RUN with dataset=cifar10",
            tiny(*MOCO_RECO, "dataset=cifar10", "resume=run"),
            setup=run,
        ),
        Case(
            "resume=<truncated ckpt>",
            tiny(*MOCO_RECO, "resume=truncated.ckpt"),
            setup=copy_fixture("truncated", "truncated.ckpt"),
        ),
        Case("resume=<missing path>", tiny(*MOCO_RECO, "resume=no/such/run")),
        Case(
            "resume=auto with a truncated last.ckpt",
            tiny(*MOCO_RECO, "hydra.run.dir=run", "resume=auto"),
            setup=truncate_last_checkpoint(),
        ),
        Case(
            "hydra.run.dir under a regular file",
            tiny(*MOCO_RECO, "hydra.run.dir=FILE/run"),
            setup=make_paths({"FILE": b"a file, not a folder\n"}),
        ),
        Case(
            "checkpoints/ is a file (resume=auto)",
            tiny(*MOCO_RECO, "hydra.run.dir=DIR", "resume=auto"),
            setup=make_paths({"DIR/checkpoints": b"a file, not a folder\n"}),
        ),
        Case(
            "run directory another live process trains in (resume=auto)",
            tiny(*MOCO_RECO, "hydra.run.dir=DIR", "resume=auto"),
            setup=locked_by_this_process("DIR"),
        ),
        Case(
            "resume=RUN while another live process trains in it",
            tiny(*MOCO_RECO, "resume=run"),
            setup=both(run, locked_by_this_process("run")),
        ),
        Case(
            "sweep whose job 0 diverges (optimizer.lr=1e30,0.03): job 1 still finishes",
            [
                "-m",
                *(
                    o.replace("method.", "++method.", 1)
                    for o in tiny(*MOCO, "optimizer.lr=1e30,0.03")
                ),
                "hydra.sweep.dir=sweep",
            ],
            must_leave=(
                "sweep/0/failed.json",
                "sweep/1/summary.json",
                "sweep/1/checkpoints/last.ckpt",
            ),
        ),
        # -- evaluation
        Case("eval without checkpoint=", [*EVAL_QUICK], module=EVAL),
        Case(
            "resume=<crafted ckpt whose pickle runs code>",
            tiny(*MOCO_RECO, "resume=crafted/checkpoints/last.ckpt"),
            setup=crafted_checkpoint("crafted/checkpoints/last.ckpt"),
        ),
        Case(
            "eval a crafted ckpt whose pickle runs code",
            ["checkpoint=crafted.ckpt", *EVAL_QUICK],
            module=EVAL,
            setup=crafted_checkpoint("crafted.ckpt"),
        ),
        Case(
            "resume=RUN_DIR whose config.yaml names a _target_",
            tiny(*MOCO_RECO, "resume=run"),
            setup=edit_run_config("callbacks:\n- _target_: os.getcwd\n"),
        ),
        Case(
            "resume=RUN_DIR whose config.yaml is malformed",
            tiny(*MOCO_RECO, "resume=run"),
            setup=edit_run_config("seed: [0\n  method: {\n"),
        ),
        Case(
            "eval a truncated ckpt",
            ["checkpoint=truncated.ckpt", *EVAL_QUICK],
            module=EVAL,
            setup=copy_fixture("truncated", "truncated.ckpt"),
        ),
        Case(
            "eval an empty ckpt",
            ["checkpoint=empty.ckpt", *EVAL_QUICK],
            module=EVAL,
            setup=copy_fixture("empty", "empty.ckpt"),
        ),
        Case(
            "eval a text file as ckpt",
            ["checkpoint=x.ckpt", *EVAL_QUICK],
            module=EVAL,
            setup=copy_fixture("text", "x.ckpt"),
        ),
        Case(
            "eval a torch file that is no checkpoint",
            ["checkpoint=foreign.ckpt", *EVAL_QUICK],
            module=EVAL,
            setup=copy_fixture("foreign", "foreign.ckpt"),
        ),
        Case("eval a missing path", ["checkpoint=no/such/run", *EVAL_QUICK], module=EVAL),
        Case("eval knn.k=0", ["checkpoint=run", "knn.k=0", *EVAL_QUICK], module=EVAL, setup=run),
        Case(
            "eval knn.temperature=-1",
            ["checkpoint=run", "knn.temperature=-1", *EVAL_QUICK],
            module=EVAL,
            setup=run,
        ),
        Case(
            "eval misspelt key (knn.kk=3)",
            ["checkpoint=run", "knn.kk=3", *EVAL_QUICK],
            module=EVAL,
            setup=run,
        ),
        Case(
            "eval dataset=imagefolder without root",
            ["checkpoint=run", "dataset=imagefolder", *EVAL_QUICK],
            module=EVAL,
            setup=run,
        ),
        Case(
            "eval device=cuda without a GPU",
            ["checkpoint=run", "device=cuda", *EVAL_QUICK],
            module=EVAL,
            setup=run,
            cpu_only=True,
        ),
    ]


# ----------------------------------------------------------------------------- running
def subprocess_env() -> dict[str, str]:
    """The user's environment, one thread per process, Hydra's default (short) errors."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def ignored(relative: Path) -> bool:
    """Hydra's own record (``.hydra/``) and log files are left out of every comparison."""
    return ".hydra" in relative.parts or relative.suffix == ".log"


@dataclass
class Snapshot:
    """The files of a directory tree (path -> SHA-256) and its subdirectories."""

    files: dict[str, str]
    dirs: set[str]


def snapshot(root: Path) -> Snapshot:
    files: dict[str, str] = {}
    dirs: set[str] = set()
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if ignored(relative):
            continue
        if path.is_dir() and not path.is_symlink():
            dirs.add(str(relative))
        elif path.is_file():
            files[str(relative)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return Snapshot(files, dirs)


def changed_files(before: Snapshot, after: Snapshot) -> list[str]:
    """Files that existed before and were modified or removed."""
    return [name for name, digest in before.files.items() if after.files.get(name) != digest]


def new_paths(before: Snapshot, after: Snapshot) -> list[str]:
    """The topmost new files and directories (``outputs`` rather than everything in it)."""
    new = (set(after.files) | after.dirs) - (set(before.files) | before.dirs)
    return sorted(p for p in new if str(Path(p).parent) not in new)


@dataclass
class Message:
    first_line: str
    one_line: bool
    traceback: bool


def exception_line(lines: Sequence[str]) -> int:
    """The index of the exception's line: the first unindented line after the last traceback
    header."""
    last = max(
        (i for i, line in enumerate(lines) if line.lstrip().startswith("Traceback")), default=-1
    )
    return next(
        (i for i in range(last + 1, len(lines)) if not lines[i][:1].isspace()), len(lines) - 1
    )


def read_message(stderr: str) -> Message:
    """The message's first line and shape (see the module docstring)."""
    lines = [line.rstrip() for line in stderr.splitlines() if line.strip()]
    traceback = "Traceback" in stderr
    if not lines:
        return Message("(stderr empty)", False, traceback)
    start = next((i for i, line in enumerate(lines) if OUR_ERROR.match(line)), None)
    if start is None:
        start = next((i for i, line in enumerate(lines) if line.startswith("reco_lightning")), None)
    shown = start
    if start is None:
        start = 0
        shown = exception_line(lines) if traceback else 0
    text = lines[shown].strip()
    if len(text) > MESSAGE_CHARS:
        text = text[: MESSAGE_CHARS - 3] + "..."
    return Message(text, len(lines) - start == 1, traceback)


@dataclass
class Outcome:
    case: Case
    returncode: int | None  # None: timed out
    message: Message
    changed: list[str]
    left: list[str]
    stderr: str = field(repr=False, default="")
    #: the files of ``case.must_leave`` that the command did not leave
    missing: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        leaves = self.case.must_leave
        return (
            self.returncode == 2
            and (self.message.one_line or bool(leaves))
            and not self.message.traceback
            and not self.changed
            and not self.missing
            and not [
                p
                for p in self.left
                if not any(f.startswith(f"{p}/") for f in leaves)
                and not any(p == k or p.startswith(f"{k}/") for k in self.case.may_leave)
            ]
        )


def run_case(case: Case, fixtures: Fixtures, workspace: Path) -> Outcome:
    """Run one case in a fresh directory under ``workspace``."""
    cwd = Path(tempfile.mkdtemp(prefix="case-", dir=workspace))
    if case.setup is not None:
        case.setup(cwd, fixtures)
    before = snapshot(cwd)
    argv = [sys.executable, "-m", case.module, *case.argv]
    try:
        done = subprocess.run(
            argv,
            cwd=cwd,
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=CASE_TIMEOUT_S,
        )
        returncode, stderr = done.returncode, done.stderr
    except subprocess.TimeoutExpired as error:
        returncode = None
        stderr = (
            error.stderr.decode(errors="replace")
            if isinstance(error.stderr, bytes)
            else (error.stderr or "")
        )
    after = snapshot(cwd)
    left = new_paths(before, after) if returncode != 0 else []
    missing = [name for name in case.must_leave if name not in after.files]
    stderr = stderr.replace(str(cwd.resolve()), "CWD").replace(
        str(cwd), "CWD"
    )  # stable across runs
    stderr = re.sub(rf"\b{os.getpid()}\b", "PID", stderr)  # a lock this script holds
    return Outcome(
        case, returncode, read_message(stderr), changed_files(before, after), left, stderr, missing
    )


# ----------------------------------------------------------------------------- reporting
def yes_no(value: bool) -> str:
    return "yes" if value else "no"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def code(text: str) -> str:
    """``text`` as a markdown code span, also when it holds backticks itself."""
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def row(outcome: Outcome) -> str:
    m = outcome.message
    exit_code = "timeout" if outcome.returncode is None else str(outcome.returncode)
    unchanged = "yes" if not outcome.changed else "no: " + ", ".join(outcome.changed[:3])
    left = ", ".join(outcome.left[:3]) or "-"
    if outcome.case.must_leave:  # a sweep: its directory, with the job that finished
        left += f" (missing: {', '.join(outcome.missing)})" if outcome.missing else " (as it must)"
    cells = [
        outcome.case.name,
        code(outcome.case.shown()),
        exit_code,
        code(m.first_line),
        yes_no(m.traceback),
        yes_no(m.one_line),
        unchanged,
        left,
        "PASS" if outcome.passed else "**FAIL**",
    ]
    return "| " + " | ".join(cell(c) for c in cells) + " |"


HEADER = (
    "| case | command (besides the tiny settings) | exit | first line of stderr | traceback "
    "| one line | existing files unchanged | left behind | result |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


def table(outcomes: Sequence[Outcome]) -> str:
    passed = sum(o.passed for o in outcomes)
    rows = "\n".join(row(o) for o in outcomes)
    return f"{HEADER}\n{rows}\n\n{passed} of {len(outcomes)} cases pass"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the markdown table to this file")
    parser.add_argument(
        "--only", help="run only the cases whose name contains this (case-insensitive)"
    )
    parser.add_argument("--list", action="store_true", help="list the case names and exit")
    parser.add_argument(
        "--show-stderr", action="store_true", help="print the whole stderr of failing cases"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directories (printed)"
    )
    return parser.parse_args(argv)


def select(all_cases: Sequence[Case], only: str | None) -> list[Case]:
    if not only:
        return list(all_cases)
    return [case for case in all_cases if only.lower() in case.name.lower()]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    chosen = select(cases(), args.only)
    if args.list or not chosen:
        print("\n".join(case.name for case in chosen) or f"no case matches {args.only!r}")
        return 0 if chosen else 1
    workspace = Path(tempfile.mkdtemp(prefix="reco-faults-"))
    fixtures_dir = workspace / "fixtures"
    fixtures_dir.mkdir()
    fixtures = Fixtures(fixtures_dir)
    outcomes: list[Outcome] = []
    try:
        for number, case in enumerate(chosen, 1):
            if case.cpu_only and fixtures.gpu:
                print(
                    f"[{number}/{len(chosen)}] {case.name}: skipped (this machine has a GPU)",
                    flush=True,
                )
                continue
            try:
                outcome = run_case(case, fixtures, workspace)
            except Unavailable as reason:
                print(f"[{number}/{len(chosen)}] {case.name}: skipped ({reason})", flush=True)
                continue
            outcomes.append(outcome)
            verdict = "PASS" if outcome.passed else "FAIL"
            print(f"[{number}/{len(chosen)}] {verdict} {row(outcome)}", flush=True)
            if args.show_stderr and not outcome.passed:
                print(outcome.stderr.rstrip() or "(stderr empty)", flush=True)
    finally:
        for mount in MOUNTED:
            subprocess.run(["umount", str(mount)], capture_output=True)
        if args.keep:
            print(f"kept {workspace}")
        else:
            shutil.rmtree(workspace, ignore_errors=True)
    report = table(outcomes)
    print("\n" + report)
    if args.out:
        args.out.write_text(report + "\n")
        print(f"wrote {args.out}")
    return 0 if all(o.passed for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
