"""MLP heads: the projector and the predictor of SimCLR, MoCo v2 and BYOL."""

from __future__ import annotations

from torch import nn


def mlp_head(
    in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2, output_bn: bool = False
) -> nn.Sequential:
    """Linear-BN-ReLU blocks followed by a linear output layer.

    BatchNorm in the hidden layers follows SimCLR v2, BYOL and solo-learn's MoCo v2+; it
    is what makes BYOL train at all without negatives. ``output_bn`` adds a BatchNorm
    without affine parameters after the output layer (as MoCo v3 does), which centres the
    embeddings over the batch (why MoCo needs it: :class:`~reco_lightning.methods.MoCo`).
    """
    if num_layers < 1:
        raise ValueError(f"an MLP head needs at least one layer, got num_layers={num_layers}")
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers += [
            nn.Linear(dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
        ]
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim, bias=not output_bn))
    if output_bn:
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)
