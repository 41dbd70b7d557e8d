"""Ranks, and gathering tensors from every rank (with one process: the input unchanged)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import Tensor


def world_size() -> int:
    """Number of processes in the default group (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in the default group (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


@torch.no_grad()
def gather_without_grad(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` from all ranks along dim 0, in rank order (for queue keys)."""
    if world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def gather_with_grad(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` from all ranks along dim 0, letting gradients flow back.

    The gradient for rank r's embeddings must be the *sum* over ranks of d(loss_j)/d(z_r);
    returning only the local slice of the local gradient (a bug other SSL libraries have
    shipped) drops the other ranks' terms. PyTorch's differentiable ``all_gather`` sums them
    (``tests/test_distributed.py`` checks it). Assumes equal rows on every rank (``drop_last``).
    """
    if world_size() == 1:
        return tensor
    return torch.cat(dist_nn.all_gather(tensor.contiguous()), dim=0)


#: environment variables through which a launcher tells a process its rank
RANK_VARIABLES = ("LOCAL_RANK", "RANK", "SLURM_PROCID", "TORCHELASTIC_RUN_ID")


def global_rank_from_environment() -> int:
    """This process's global rank as the environment states it (0 when none does)."""
    for name in ("RANK", "SLURM_PROCID"):
        if name in os.environ:
            return int(os.environ[name])
    local = int(os.environ.get("LOCAL_RANK", 0))
    node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", 0)))
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("RECO_LOCAL_WORLD_SIZE", 1)))
    return node * per_node + local
