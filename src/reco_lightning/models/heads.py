"""MLP heads: the projector and the predictor of SimCLR, MoCo v2 and BYOL."""

from __future__ import annotations

from torch import nn


def mlp_head(
    in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2, output_bn: bool = False
) -> nn.Sequential:
    """Linear-BN-ReLU blocks followed by a linear output layer.

    BatchNorm in the hidden layers follows SimCLR v2, BYOL and solo-learn's MoCo v2+; it
    is what makes BYOL train at all without negatives. ``output_bn`` adds a BatchNorm
    without affine parameters after the output layer (as MoCo v3 does): it centres the
    embeddings over the batch, which removes the shortcut of mapping every image to one
    shared direction that MoCo's queue otherwise rewards at the start of training.
    """
    if num_layers < 1:
        raise ValueError(f"an MLP head needs at least one layer, got num_layers={num_layers}")
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        dim = hidden_dim
    if output_bn:
        layers += [nn.Linear(dim, out_dim, bias=False), nn.BatchNorm1d(out_dim, affine=False)]
    else:
        layers.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*layers)
