"""Optimizers (SGD, LARS) and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from ..errors import ConfigError


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al., 2017).

    Each parameter's update is scaled by ``eta * ||w|| / ||g + wd * w||``; parameter
    groups with ``lars_exclude=True`` (biases and norm layers, as in SimCLR and BYOL) get
    plain SGD with momentum.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.02,
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars_exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if group["weight_decay"] and not group["lars_exclude"]:
                    grad = grad.add(param, alpha=group["weight_decay"])
                if not group["lars_exclude"]:
                    param_norm = torch.linalg.vector_norm(param)
                    grad_norm = torch.linalg.vector_norm(grad)
                    trust = torch.where(
                        (param_norm > 0) & (grad_norm > 0),
                        group["eta"] * param_norm / grad_norm,
                        torch.ones_like(param_norm),
                    )
                    grad = grad.mul(trust)
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = grad.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
                param.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def split_decay_groups(module: nn.Module) -> list[dict]:
    """Two parameter groups: weights, and biases/norm parameters (no decay, no LARS)."""
    decay, no_decay = [], []
    for param in module.parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True}]


def build_optimizer(
    name: str, groups: list[dict], lr: float, weight_decay: float, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """``sgd`` or ``lars`` over ``groups`` (see :func:`split_decay_groups`)."""
    if lr <= 0:
        raise ConfigError(f"optimizer.lr={lr} must be positive")
    if name == "sgd":
        clean = [{k: v for k, v in g.items() if k != "lars_exclude"} for g in groups]
        return torch.optim.SGD(clean, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ConfigError(f"optimizer.name={name!r} is unknown: choose 'sgd' or 'lars'")


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, final_ratio: float = 0.0) -> float:
    """Learning-rate multiplier: linear warm-up to 1, then a half cosine down to ``final_ratio``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
