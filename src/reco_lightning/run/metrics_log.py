"""``metrics.csv`` that survives a resume: every row once, from the random-initialisation
point to the last epoch.

Lightning's CSV logger deletes ``metrics.csv`` when it starts in a directory that has one,
so after ``resume=...`` the file (and ``training_curves.png``) began at the resume point.
Here the :class:`MetricsHistory` callback saves the logger's rows in each checkpoint and
restores them before any new one is logged. Rows written after the checkpoint are left
out, since the resumed run logs those steps again.

>>> logger = CSVHistoryLogger(save_dir="run", name="", version="")
>>> callbacks = [MetricsHistory(logger)]  # Trainer(logger=logger, callbacks=callbacks)
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor


class CSVHistoryLogger(CSVLogger):
    """A CSV logger that remembers every row it recorded (``history``), in order."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.history: list[dict[str, Any]] = []

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        # the row as the writer records it (its buffer may be flushed inside the call)
        row = {
            key: value.item() if isinstance(value, Tensor) else value
            for key, value in metrics.items()
        }
        row["step"] = step if step is not None else len(self.experiment.metrics)
        super().log_metrics(metrics, step)
        self.history.append(row)

    @rank_zero_only
    def restore(self, rows: list[dict[str, Any]]) -> None:
        """Put the rows of an earlier part of this run first (written at the next save)."""
        self.history = [dict(row) for row in rows]
        self.experiment.metrics[:0] = [dict(row) for row in rows]


class MetricsHistory(Callback):
    """Saves the CSV logger's rows in checkpoints and gives them back on resume."""

    def __init__(self, logger: CSVHistoryLogger) -> None:
        self.logger = logger

    def state_dict(self) -> dict[str, Any]:
        return {"rows": list(self.logger.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.logger.restore(list(state_dict.get("rows", [])))


__all__ = ["CSVHistoryLogger", "MetricsHistory"]
