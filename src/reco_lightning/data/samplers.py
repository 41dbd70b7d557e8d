"""Samplers that shard data across ranks themselves, so runs can resume mid-epoch.

Lightning's default is to wrap every loader in a ``DistributedSampler``. That sampler pads
the validation set with repeated images (so metrics are not over the exact set) and cannot
restart in the middle of an epoch. The samplers here replace it (the Trainer is built with
``use_distributed_sampler=False``):

* :class:`TrainSampler` draws one permutation per ``(seed, epoch)`` and hands rank ``r``
  the ``r``-th slice of every *global* batch, so two ranks with batch ``b`` see exactly the
  global batch that one process with batch ``2b`` sees. Each index comes with a seed for
  its augmentations (see :class:`~reco_lightning.data.datamodule.MultiViewDataset`), which
  makes the views independent of worker count and of the global RNG. After a resume it
  skips the batches the checkpoint had already trained on.
* :class:`EvalSampler` gives rank ``r`` the indices ``r, r + N, r + 2N, ...``: no padding,
  no repeats, every image evaluated exactly once over all ranks.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from ..utils.distributed import rank, world_size


class TrainSampler(Sampler[tuple[int, int]]):
    """Shuffled ``(index, augmentation seed)`` pairs of this rank's share of each global batch.

    Args:
        num_samples: size of the training set.
        batch_size: per-device batch size.
        seed: run seed; the order of epoch ``e`` depends only on ``(seed, e)``.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0) -> None:
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.skip_batches = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before each epoch."""
        self.epoch = epoch

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """Start the next iteration at ``epoch``, past its first ``batches_done`` batches."""
        self.epoch = epoch
        self.skip_batches = batches_done

    def batches_per_epoch(self) -> int:
        return self.num_samples // (self.batch_size * world_size())

    def __len__(self) -> int:
        return self.batches_per_epoch() * self.batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        world, me = world_size(), rank()
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=generator).tolist()
        seeds = torch.randint(0, 2**62, (self.num_samples,), generator=generator).tolist()
        global_batch = self.batch_size * world
        start, self.skip_batches = self.skip_batches, 0  # skipping applies to one iteration only
        for batch in range(start, self.batches_per_epoch()):
            first = batch * global_batch + me * self.batch_size
            for position in range(first, first + self.batch_size):
                yield order[position], seeds[position]


class EvalSampler(Sampler[int]):
    """Every index once over all ranks, in order: ``rank, rank + world, ...``."""

    def __init__(self, num_samples: int) -> None:
        self.num_samples = num_samples

    def __len__(self) -> int:
        return len(range(rank(), self.num_samples, world_size()))

    def __iter__(self) -> Iterator[int]:
        return iter(range(rank(), self.num_samples, world_size()))


__all__ = ["EvalSampler", "TrainSampler"]
