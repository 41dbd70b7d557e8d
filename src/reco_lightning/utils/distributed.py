"""Gathering tensors from every rank, with and without gradients.

With one process both functions return their input unchanged, so the same code runs on a
laptop and on many GPUs.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
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


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sends every rank the *sum* of the gradients for its slice.

    Each rank's loss depends on the embeddings of all ranks, so the gradient for rank r's
    embeddings is the sum over ranks of d(loss_j)/d(z_r). Returning only the local slice of
    the local gradient (a bug other SSL libraries have shipped) silently drops the other
    ranks' terms; DDP's later averaging then gives the gradient of the mean loss.
    """

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:  # type: ignore[override]
        ctx.batch_size = tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad_output.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = rank() * ctx.batch_size
        return grad[start : start + ctx.batch_size]


def gather_with_grad(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` from all ranks along dim 0, letting gradients flow back.

    Assumes every rank holds the same number of rows (true with ``drop_last=True``).
    """
    if world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


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
