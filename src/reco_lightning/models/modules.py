"""Walks over a module's children that methods and ReCo share (below both)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

#: the input :func:`embedding_children` runs when the owner sets no ``example_input_array``
DEFAULT_EXAMPLE = (2, 3, 32, 32)


def trainable_children(
    owner: nn.Module, exclude: Callable[[str], bool] = lambda name: False
) -> list[str]:
    """Names of ``owner``'s children with at least one trainable parameter."""
    return [
        name
        for name, child in owner.named_children()
        if not exclude(name) and any(p.requires_grad for p in child.parameters())
    ]


@torch.no_grad()
def embedding_children(
    owner: nn.Module, method: str = "online_embedding", example: Tensor | None = None
) -> list[str]:
    """Names of ``owner``'s trainable children that ``owner.<method>`` runs through, found by
    running it once on ``example`` (default: the owner's ``example_input_array``, else zeros
    of shape :data:`DEFAULT_EXAMPLE`) in eval mode, so no statistic moves: what an EMA
    teacher of the embedding must copy, and nothing else (not a probe, not a target).

    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.encoder, self.probe = nn.Linear(4, 3), nn.Linear(3, 2)
    ...     def online_embedding(self, x):
    ...         return self.encoder(x)
    >>> embedding_children(Net(), example=torch.zeros(2, 4))
    ['encoder']
    """
    if example is None:
        example = getattr(owner, "example_input_array", None)
    if example is None:
        example = torch.zeros(DEFAULT_EXAMPLE)
    names = trainable_children(owner)
    called: set[str] = set()
    hooks = [
        getattr(owner, name).register_forward_hook(lambda *_, name=name: called.add(name))
        for name in names
    ]
    modes = {module: module.training for module in owner.modules()}
    try:
        owner.train(False)
        getattr(owner, method)(example)
    finally:
        for hook in hooks:
            hook.remove()
        for module, mode in modes.items():
            module.training = mode
    return [name for name in names if name in called]


def compile_in_place(modules: Iterable[nn.Module | None]) -> None:
    """``torch.compile`` each module in place, once (``None`` and compiled ones are skipped).

    In place, checkpoints of compiled and eager runs load into each other. Call it after any
    target network was copied: a deep copy of a compiled module calls the original's forward.
    """
    for module in modules:
        if isinstance(module, nn.Module) and getattr(module, "_compiled_call_impl", None) is None:
            module.compile()


__all__ = ["compile_in_place", "embedding_children", "trainable_children"]
