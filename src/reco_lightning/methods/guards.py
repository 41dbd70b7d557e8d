"""The stop at the first non-finite loss, with the step, the term and what to do.

Training on would only overwrite the last good checkpoint with a broken one, so the built-in
methods check every step's loss (:func:`check_finite_loss`); under DDP the ranks agree
first (``reduce``), so they stop together instead of hanging.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import NonFiniteLossError

FIXES = "lower optimizer.lr, raise optimizer.warmup_epochs or try trainer.precision=32-true"


def check_finite_loss(
    loss: Tensor,
    terms: dict[str, Tensor | None],
    where: str,
    last_checkpoint: str | None = None,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> None:
    """Raise NonFiniteLossError naming ``where`` (the step), the non-finite ``terms`` and the
    checkpoint that is kept, if ``loss`` (on any rank, with ``reduce`` a min over ranks) is
    NaN or infinite.

    >>> check_finite_loss(torch.tensor(1.0), {}, "step 0")
    >>> check_finite_loss(torch.tensor(float("nan")), {"loss": torch.tensor(float("nan"))},
    ...                   "global step 3")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    reco_lightning.errors.NonFiniteLossError: the loss became non-finite at global step 3: ...
    """
    finite = torch.isfinite(loss.detach()).to(torch.float32)
    if reduce is not None:
        finite = reduce(finite)
    if bool(finite):
        return
    bad = [
        f"{name} = {float(value.detach()):g}"
        for name, value in terms.items()
        if value is not None and not torch.isfinite(value.detach())
    ]
    if not bad:
        bad = ["a term on another rank"] if reduce is not None else ["the summed loss"]
    if last_checkpoint is None:
        kept = f"no checkpoint had been written yet, so start the run again: {FIXES}"
    else:
        kept = (
            f"{last_checkpoint} (written before this step) is kept: {FIXES}, "
            f"then continue with resume={last_checkpoint}"
        )
    raise NonFiniteLossError(
        f"the loss became non-finite at {where}: {', '.join(bad)}. Training stopped; {kept}"
    )


__all__ = ["check_finite_loss"]
