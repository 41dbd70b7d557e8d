"""The exponential moving average (momentum) encoder and its schedule."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def make_target(online: nn.Module) -> nn.Module:
    """A frozen copy of ``online`` to be updated only by :func:`ema_update`."""
    target = copy.deepcopy(online)
    for param in target.parameters():
        param.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``target = momentum * target + (1 - momentum) * online`` for every parameter.

    Buffers (BatchNorm running statistics) are copied, as in MoCo and BYOL: the target's
    own statistics come from its forward passes in train mode anyway.
    """
    target_params = list(target.parameters())
    online_params = [p.detach() for p in online.parameters()]
    torch._foreach_mul_(target_params, momentum)
    torch._foreach_add_(target_params, online_params, alpha=1.0 - momentum)
    for target_buffer, online_buffer in zip(target.buffers(), online.buffers()):
        target_buffer.copy_(online_buffer)


def cosine_momentum(base: float, step: int, total_steps: int, final: float = 1.0) -> float:
    """BYOL's schedule: momentum rises from ``base`` to ``final`` along a half cosine."""
    if total_steps <= 0:
        return base
    progress = min(step / total_steps, 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


def scheduled_momentum(base: float, schedule: str, step: int, total_steps: int) -> float:
    """The momentum at ``step``: ``base`` for ``constant``, :func:`cosine_momentum` for
    ``cosine``."""
    return cosine_momentum(base, step, total_steps) if schedule == "cosine" else base


class OncePerOptimizerStep(nn.Module):
    """Says yes once per optimizer step, so an EMA moves once per step, not per micro-batch.

    Lightning's ``on_train_batch_end`` fires after every micro-batch, but with
    ``accumulate_grad_batches=N`` only every N-th is followed by an optimizer step (what
    ``global_step`` counts). :meth:`due` answers yes when ``global_step`` has moved past the
    last step it said yes for; that step is saved in checkpoints (extra state), so a run
    resumed between micro-batches does not update twice. ``step=None`` (no Trainer) is a step.

    >>> gate = OncePerOptimizerStep()
    >>> [gate.due(step) for step in (0, 1, 1, 2)]
    [False, True, False, True]
    """

    def __init__(self) -> None:
        super().__init__()
        self.last_step = 0

    def due(self, step: int | None) -> bool:
        if step is None:
            return True
        if step > self.last_step:
            self.last_step = step
            return True
        return False

    def get_extra_state(self) -> dict[str, int]:
        return {"last_step": self.last_step}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.last_step = int(state["last_step"])
