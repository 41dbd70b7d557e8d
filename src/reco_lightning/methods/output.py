"""What a method's step returns to the shared training step."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class MethodOutput:
    """What a method's step returns, so ReCo can reuse it instead of recomputing.

    Attributes:
        loss: the method's own loss.
        q1: online embedding of the first strong view (normalised, with gradient).
        k2: target embedding of the second strong view (normalised, detached).
        features: backbone features of the first strong view (for the online probe).
        negatives: MoCo's queue as lent to ReCo's local term: its written rows before this
            step's keys went in; ``None`` for methods without a queue.
    """

    loss: Tensor
    q1: Tensor
    k2: Tensor
    features: Tensor
    negatives: Tensor | None = None


__all__ = ["MethodOutput"]
