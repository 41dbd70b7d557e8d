"""Callbacks the training job adds to Lightning's: the run's checkpoints (at epoch
boundaries, the best, and on SIGTERM and Ctrl-C), and a clock of the time spent training
(for comparisons at equal wall time).

A pre-empted cluster job gets SIGTERM and, shortly after, SIGKILL; a user stops a run
with Ctrl-C. Lightning on its own exits on SIGTERM without saving (outside SLURM's
auto-requeue) and aborts Ctrl-C wherever the step happens to be. Here both signals only
set a flag; the step in progress finishes, and before the next step starts every rank
agrees to stop, ``last.ckpt`` is written (atomically) and the process exits with
``128 + signal number``. ``resume=auto`` then continues from exactly that point.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.trainer.states import TrainerFn

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunCheckpoints(Callback):
    """Every checkpoint of a run, each written when the run's state is whole.

    * ``last.ckpt`` at every epoch boundary (before the first step of each epoch after the
      one this process started in), at the end of training, and after SIGTERM or Ctrl-C
      (then the process exits with ``128 + signal number``);
    * ``best-epochNNN-knnX.ckpt`` for the highest ``val/knn_acc``, written at the next of
      those moments after the validation that found it (the weights are the same; the
      epoch's logs are then complete), the previous best removed.

    Between two steps every queue, EMA target, RNG and logged row belongs to one moment, so
    ``resume=auto`` from any of these files continues exactly as the uninterrupted run
    would, also after a SIGKILL (from the last file written). Lightning's ``ModelCheckpoint``
    writes at the end of a training epoch, before that epoch's logs are recorded, so a run
    resumed from it lost the epoch's training row; and its ``save_last`` writes ``last.ckpt``
    only on epochs that improve the monitored value. The files themselves are written
    atomically (:class:`~reco_lightning.run.checkpoints.AtomicCheckpointIO`).

    A second Ctrl-C while the first is being handled interrupts at once, as usual.
    """

    def __init__(self, dirpath: str | Path, monitor: str = "val/knn_acc") -> None:
        self.folder = Path(dirpath)
        self.last_path = self.folder / "last.ckpt"
        self.monitor = monitor
        self.best_score: float | None = None
        self.best_path: str | None = None
        self._pending_best: tuple[int, float] | None = None
        self._seen_batch = False
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        # Lightning's count of stepped batches (the step its loggers write) while this
        # callback saves, and after a resume from such a save: see on_train_batch_start.
        self._saving_step: int | None = None
        self._resumed_step: int | None = None

    # -- signal handling ------------------------------------------------------------------
    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.received = signum
        print(
            f"reco_lightning: received {signal.Signals(signum).name}; saving a checkpoint after "
            "this step",
            file=sys.stderr,
            flush=True,
        )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:  # what a killed write left; never read as a checkpoint
            for torn in self.folder.glob(".*.ckpt.*.tmp"):
                torn.unlink(missing_ok=True)
        # Installed here, after Lightning registered its own SIGTERM handler, and replacing
        # it: Lightning's would end the run at the step's end without a checkpoint.
        if threading.current_thread() is not threading.main_thread():
            return  # signals can only be handled in the main thread
        for signum in HANDLED_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():  # the handlers from before on_train_start
            signal.signal(signum, handler)
        self._previous = {}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handlers()
        if self._pending_best is not None:
            self._write_best(trainer)
        trainer.save_checkpoint(self.last_path)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore_handlers()

    def state_dict(self) -> dict[str, Any]:
        return {
            "batches_that_stepped": self._saving_step,
            "monitor": self.monitor,
            "best_score": self.best_score,
            "best_path": self.best_path,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resumed_step = state_dict.get("batches_that_stepped")
        self.best_score = state_dict.get("best_score")
        self.best_path = state_dict.get("best_path")

    # -- the best checkpoint --------------------------------------------------------------
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:
            return
        score = trainer.callback_metrics.get(self.monitor)
        if score is None:
            return
        value = float(score)
        if self.best_score is None or value > self.best_score:
            self._pending_best = (trainer.current_epoch, value)

    def _write_best(self, trainer: L.Trainer) -> None:
        epoch, value = self._pending_best or (trainer.current_epoch, 0.0)
        self._pending_best = None
        previous = self.best_path
        path = self.folder / f"best-epoch{epoch:03d}-knn{value:.4f}.ckpt"
        self.best_score, self.best_path = value, str(path)
        trainer.save_checkpoint(path)
        if trainer.is_global_zero and previous and Path(previous) != path:
            Path(previous).unlink(missing_ok=True)

    # -- saving between steps ---------------------------------------------------------------
    def _stop_requested(self, trainer: L.Trainer) -> int:
        """The signal number any rank received (0 for none); all ranks must call it."""
        flag = torch.tensor(float(self.received or 0), device=trainer.strategy.root_device)
        if trainer.world_size > 1:
            flag = trainer.strategy.reduce(flag, reduce_op="max")
        return int(flag.item())

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Between two steps the state is whole: the previous step's queues are filled."""
        epoch_loop = trainer.fit_loop.epoch_loop
        if self._resumed_step is not None:
            # Lightning assumes a mid-epoch checkpoint was saved at a batch's end, before it
            # counted the batch, and adds one on restore; ours is saved after, so the loggers'
            # step would run one ahead of the uninterrupted run's: put it back.
            epoch_loop._batches_that_stepped = self._resumed_step
            self._resumed_step = None
        boundary = self._seen_batch and batch_idx == 0  # a new epoch, not this process's first
        self._seen_batch = True
        signum = self._stop_requested(trainer)
        if not (signum or boundary or self._pending_best is not None):
            return
        self._saving_step = epoch_loop._batches_that_stepped
        try:
            if self._pending_best is not None:
                self._write_best(trainer)
            if signum or boundary:
                trainer.save_checkpoint(self.last_path)
        finally:
            self._saving_step = None
        if not signum:
            return
        if trainer.is_global_zero:
            print(
                f"reco_lightning: saved {self.last_path} at global step {trainer.global_step}; "
                "continue with resume=auto (and the same hydra.run.dir)",
                file=sys.stderr,
                flush=True,
            )
        trainer.strategy.barrier("checkpoint-on-signal")
        raise SystemExit(128 + signum)


class TrainingClock(Callback):
    """Logs ``time/train_s`` at each epoch end: wall seconds spent training so far.

    Validation inside an epoch is left out, and the count survives a resume (it is saved
    in the checkpoint), so a ReCo-on run and a ReCo-off run can be compared at equal
    training time, not only at equal epochs.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self._started: float | None = None

    def _stop(self) -> None:
        if self._started is not None:
            self.seconds += time.perf_counter() - self._started
            self._started = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # Lightning skips on_train_epoch_start when it resumes inside an epoch
        if self._started is None:
            self._started = time.perf_counter()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._stop()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop()
        pl_module.log("time/train_s", self.seconds, on_step=False, on_epoch=True)

    def state_dict(self) -> dict[str, float]:
        return {"seconds": self.seconds}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self.seconds = float(state_dict.get("seconds", 0.0))


class EpochProgressBar(TQDMProgressBar):
    """Lightning's progress bar, which also shows the epoch and its length in the first
    epoch of a run resumed mid-epoch (Lightning skips ``on_train_epoch_start`` there, so its
    bar would read "Training: 2/?")."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
        if trainer.fit_loop.restarting and done > 0:
            bar = self.train_progress_bar
            bar.reset(
                total=self.total_train_batches if self.total_train_batches != float("inf") else None
            )
            bar.n = done
            bar.set_description(f"Epoch {trainer.current_epoch}")
            bar.refresh()


__all__ = ["EpochProgressBar", "RunCheckpoints", "TrainingClock"]
