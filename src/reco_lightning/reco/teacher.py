"""ReCo's own teacher: an EMA copy of the online network, for methods that have no target.

With the online network as its teacher, ReCo's local term would be MoCo with momentum 0
(positives from this step's weights, negatives from many earlier ones), which the MoCo
paper reports fails to train, as it did for SimCLR here (docs/benchmarks.md). So ReCo
keeps a slowly moving copy of its own for SimCLR and user modules without a momentum
encoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..utils.momentum import OncePerOptimizerStep, ema_update, make_target


class _Call(nn.Module):
    """Wraps ``owner.<method>`` as a forward, so ``functional_call`` can run it."""

    def __init__(self, owner: nn.Module, method: str) -> None:
        super().__init__()
        self.owner = owner
        self.method = method

    def forward(self, images: Tensor) -> Tensor:
        return getattr(self.owner, self.method)(images)


class EMATeacher(nn.Module):
    """Frozen EMA copies of some of a module's children, and the owner's embedding run on them.

    The teacher embedding is the owner's own ``online_embedding`` run with the copies'
    weights (``torch.func.functional_call``), so a method writes no second embedding. The
    copies are submodules without gradient: saved in checkpoints, out of the optimizer.

    >>> import lightning as L
    >>> class Net(L.LightningModule):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.encoder = nn.Linear(4, 2)
    ...     def online_embedding(self, x):
    ...         return self.encoder(x)
    >>> net = Net()
    >>> teacher = EMATeacher(net, ["encoder"])
    >>> x = torch.randn(3, 4)
    >>> torch.allclose(teacher.embed(net, x), net.online_embedding(x))   # a copy at the start
    True

    Args:
        owner: the module whose children are copied.
        names: the children that the owner's ``online_embedding`` runs through
            (SimCLR: ``backbone`` and ``projector``).
    """

    def __init__(self, owner: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        if not names:
            raise ValueError("EMATeacher needs the names of the modules to copy")
        self.copies = nn.ModuleDict({name: make_target(getattr(owner, name)) for name in names})
        self.step_gate = OncePerOptimizerStep()

    @torch.no_grad()
    def update(self, owner: nn.Module, momentum: float, step: int | None) -> bool:
        """``copy = m * copy + (1 - m) * online`` for every copied module, if ``step`` is a new
        optimizer step (``None``: always). Returns whether it moved."""
        if not self.step_gate.due(step):
            return False
        for name, copy in self.copies.items():
            ema_update(copy, getattr(owner, name), momentum)
        return True

    @torch.no_grad()
    def embed(self, owner: nn.Module, images: Tensor, method: str = "online_embedding") -> Tensor:
        """``owner.<method>(images)`` computed with the teacher's weights and buffers."""
        state = {
            f"owner.{name}.{key}": tensor
            for name, copy in self.copies.items()
            for key, tensor in chain(copy.named_parameters(), copy.named_buffers())
        }
        return functional_call(_Call(owner, method), state, (images,), strict=False)
