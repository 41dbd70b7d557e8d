"""The base methods' losses as pure functions of embeddings.

Every function takes L2-normalised embeddings and computes its logits in float32, so the
losses stay finite under bf16/fp16 autocast (1 / 0.04 * cos can exceed fp16's comfort).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..utils.distributed import gather_with_grad, rank


def info_nce_loss(query: Tensor, positive: Tensor, negatives: Tensor, temperature: float) -> Tensor:
    """MoCo's InfoNCE: each query against its positive (column 0) and a bank of negatives.

    Args:
        query: ``(B, D)`` online embeddings, with gradient.
        positive: ``(B, D)`` one positive per query (detach it yourself if it is a target).
        negatives: ``(K, D)`` negatives shared by all queries (a queue; used as given).
        temperature: softmax temperature, > 0.
    """
    query = query.float()
    positive_logit = (query * positive.float()).sum(dim=1, keepdim=True)
    negative_logits = query @ negatives.float().T
    logits = torch.cat([positive_logit, negative_logits], dim=1) / temperature
    labels = torch.zeros(query.shape[0], dtype=torch.long, device=query.device)
    return F.cross_entropy(logits, labels)


def nt_xent_loss(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """SimCLR's NT-Xent over the global batch.

    Each of the ``2n`` local embeddings is scored against all ``2N - 1`` other embeddings
    of the global batch (gathered from every rank with gradients); its positive is the
    other view of the same image. With one process ``N == n``.
    """
    n = z1.shape[0]
    keys = torch.cat([gather_with_grad(z1), gather_with_grad(z2)]).float()
    global_n = keys.shape[0] // 2
    logits = torch.cat([z1, z2]).float() @ keys.T / temperature
    local = torch.arange(n, device=z1.device) + rank() * n
    self_index = torch.cat([local, local + global_n])
    positive_index = torch.cat([local + global_n, local])
    rows = torch.arange(2 * n, device=z1.device)
    logits[rows, self_index] = float("-inf")
    return F.cross_entropy(logits, positive_index)


def byol_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """BYOL's regression loss ``2 - 2 cos(p, z')``, averaged over the batch."""
    cosine = F.cosine_similarity(prediction.float(), target.float().detach(), dim=1)
    return (2.0 - 2.0 * cosine).mean()
