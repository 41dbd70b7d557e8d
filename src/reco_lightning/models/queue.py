"""A FIFO queue of embeddings kept as module buffers.

Buffers move with the module (``.to(device)``), are saved in checkpoints and restored on
resume, unlike a plain tensor attribute (the memory bank lightly once shipped lost its
contents on resume for that reason).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..utils.distributed import gather_without_grad


class FeatureQueue(nn.Module):
    """``size`` embeddings of dimension ``dim``, oldest overwritten first.

    Starts with random unit vectors (as MoCo does), so it can be scored against from the
    first step. Any batch size up to ``size`` works: writes wrap around the end.
    """

    features: Tensor
    pointer: Tensor
    num_enqueued: Tensor

    def __init__(self, size: int, dim: int, name: str = "queue") -> None:
        super().__init__()
        if size <= 0:
            raise ConfigError(f"{name}={size} must be a positive number of embeddings")
        self.name = name
        self.register_buffer("features", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("num_enqueued", torch.zeros((), dtype=torch.long))
        self._full = False

    @property
    def size(self) -> int:
        return self.features.shape[0]

    def num_filled(self) -> int:
        """Rows written so far (at most ``size``). Reads a buffer, so on a GPU it waits for
        the device, but only until the queue is full: from then on it is known."""
        if self._full:
            return self.size
        filled = min(int(self.num_enqueued), self.size)
        self._full = filled == self.size
        return filled

    def filled(self) -> Tensor:
        """The rows that hold enqueued keys, leaving out the random start-up vectors.

        Writes begin at row 0 and wrap only once the queue is full, so until then the
        written rows are exactly ``features[:num_filled()]``.
        """
        return self.features[: self.num_filled()]

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        self._full = False  # an earlier, less full state may be loaded
        super()._load_from_state_dict(*args, **kwargs)

    @torch.no_grad()
    def enqueue(self, keys: Tensor, gather: bool = True) -> None:
        """Write ``keys`` (``(n, dim)``) after the newest entries, wrapping around.

        With ``gather`` (the default) the keys of every rank are gathered first, in rank
        order, so all ranks hold identical queues; it is then a collective call that every
        rank must make.
        """
        if gather:
            keys = gather_without_grad(keys.detach())
        n = keys.shape[0]
        if n > self.size:
            raise ConfigError(
                f"{self.name}={self.size} is smaller than the {n} keys of one global batch: "
                f"raise {self.name} to at least {n}"
            )
        index = (self.pointer + torch.arange(n, device=self.features.device)) % self.size
        self.features[index] = keys.to(self.features.dtype)
        self.pointer.copy_((self.pointer + n) % self.size)
        self.num_enqueued.add_(n)

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.features.shape[1]}"
