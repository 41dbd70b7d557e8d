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
