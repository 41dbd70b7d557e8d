"""A training run that kills itself (``os._exit(137)``, as SIGKILL leaves it: no handler,
no flush) at one chosen moment; started by ``tests/test_kill_resume.py``.

``python tests/kill_worker.py RUN_DIR MOMENT [OVERRIDES...]`` trains MoCo + ReCo through
:func:`reco_lightning.run.train.train` into ``RUN_DIR`` with ``resume=auto`` and dies at
``MOMENT``:

* ``<hook>@<step>``: in the callback hook ``<hook>`` the first time the run is at global
  step ``<step>`` (``on_before_optimizer_step@1``: in the middle of a step;
  ``on_validation_batch_end@4``: during validation);
* ``save@<step>``: half-way through writing a checkpoint at global step ``<step>`` (half its
  bytes are in the temporary file);
* ``after@<seconds>``: that many seconds after training started, wherever it is;
* ``none``: run to the end.
"""

from __future__ import annotations

import io
import os
import sys
import threading
from pathlib import Path

import lightning as L
from hydra import compose, initialize_config_module

sys.path.insert(0, str(Path(__file__).parent))
from conftest import TINY  # noqa: E402

from reco_lightning.run import checkpoints  # noqa: E402
from reco_lightning.run.train import train  # noqa: E402

KILLED = 137


def die() -> None:
    os._exit(KILLED)


class KillAt(L.Callback):
    def __init__(self, hook: str, step: int) -> None:
        def kill(trainer: L.Trainer, *args: object, **kwargs: object) -> None:
            if trainer.global_step == step and not trainer.sanity_checking:
                die()

        setattr(self, hook, kill)


def kill_while_saving(step: int) -> None:
    """Make the checkpoint writer die with half a file written at global ``step``: the
    checkpoint of that step is serialised, then half its bytes reach the temporary file."""
    original_save, original_open = checkpoints.torch.save, open
    saving: dict[str, object] = {}

    def save(state: dict, handle: io.BytesIO) -> None:
        saving["step"] = state.get("global_step")
        original_save(state, handle)

    class HalfThenDie:
        def __init__(self, path: str, mode: str) -> None:
            self.handle = original_open(path, mode)

        def __enter__(self) -> HalfThenDie:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

        def write(self, data: memoryview) -> None:
            if saving.get("step") != step:
                self.handle.write(data)
                return
            self.handle.write(bytes(data)[: len(data) // 2])
            self.handle.flush()
            die()

        def flush(self) -> None:
            self.handle.flush()

        def fileno(self) -> int:
            return self.handle.fileno()

    checkpoints.torch.save = save
    checkpoints.open = HalfThenDie  # the module's writes only; reads use torch.load


def main() -> None:
    run_dir, moment, *extra = sys.argv[1:]
    callbacks: list[L.Callback] = []
    if moment.startswith("save@"):
        kill_while_saving(int(moment.split("@")[1]))
    elif moment.startswith("after@"):
        timer = threading.Timer(float(moment.split("@")[1]), die)
        timer.daemon = True
        timer.start()
    elif moment != "none":
        hook, step = moment.split("@")
        callbacks.append(KillAt(hook, int(step)))
    overrides = ["+method=moco", "+reco=on", *TINY, "resume=auto", *extra]
    with initialize_config_module(config_module="reco_lightning.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    train(cfg, Path(run_dir), callbacks=callbacks)


if __name__ == "__main__":
    main()
