"""Optimizers (SGD, LARS) and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, positive


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al., 2017).

    Each parameter's update is scaled by ``eta * ||w|| / ||g + wd * w||``; parameter
    groups with ``lars_exclude=True`` (biases and norm layers, as in SimCLR and BYOL) get
    plain SGD with momentum.

    ``foreach=True`` updates each group with a few multi-tensor ``torch._foreach_*`` calls
    instead of a Python loop of small kernels per parameter (on a GPU the launches are what
    the step costs); ``foreach=None`` picks it on a GPU and the loop on a CPU, as torch's own
    optimizers do (``benchmarks/fast_paths.py optimizer``). Both compute the same update.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.02,
        foreach: bool | None = None,
    ) -> None:
        defaults = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars_exclude=False
        )
        super().__init__(params, defaults)
        self.foreach = foreach

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            foreach = self.foreach if self.foreach is not None else params[0].device.type != "cpu"
            (self._step_group_foreach if foreach else self._step_group_loop)(group, params)
        return loss

    def _step_group_loop(self, group: dict, params: list[torch.Tensor]) -> None:
        for param in params:
            grad = param.grad
            if not group["lars_exclude"]:
                if group["weight_decay"]:
                    grad = grad.add(param, alpha=group["weight_decay"])
                param_norm, grad_norm = (
                    torch.linalg.vector_norm(param),
                    torch.linalg.vector_norm(grad),
                )
                grad = grad.mul(_trust(param_norm, grad_norm, group["eta"]))
            state = self.state[param]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = grad.clone()
            else:
                state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
            param.add_(state["momentum_buffer"], alpha=-group["lr"])

    def _step_group_foreach(self, group: dict, params: list[torch.Tensor]) -> None:
        grads = [p.grad for p in params]
        if not group["lars_exclude"]:
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            param_norms = torch.stack(torch._foreach_norm(params))
            grad_norms = torch.stack(torch._foreach_norm(grads))
            grads = torch._foreach_mul(
                grads, list(_trust(param_norms, grad_norms, group["eta"]).unbind())
            )
        buffers, buffered_grads = [], []
        for param, grad in zip(params, grads):
            state = self.state[param]
            if "momentum_buffer" not in state:  # first step: the buffer starts as the update
                state["momentum_buffer"] = grad.clone()
            else:
                buffers.append(state["momentum_buffer"])
                buffered_grads.append(grad)
        if buffers:
            torch._foreach_mul_(buffers, group["momentum"])
            torch._foreach_add_(buffers, buffered_grads)
        torch._foreach_add_(
            params, [self.state[p]["momentum_buffer"] for p in params], alpha=-group["lr"]
        )


def _trust(param_norm: torch.Tensor, grad_norm: torch.Tensor, eta: float) -> torch.Tensor:
    """LARS's trust ratio ``eta * ||w|| / ||g||``, or 1 where either norm is zero."""
    both = (param_norm > 0) & (grad_norm > 0)
    return torch.where(both, eta * param_norm / grad_norm, torch.ones_like(param_norm))


def split_decay_groups(module: nn.Module) -> list[dict]:
    """Two parameter groups: weights, and biases/norm parameters (no decay, no LARS)."""
    decay, no_decay = [], []
    for param in module.parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True}]


OPTIMIZER_KERNELS = ("auto", "loop", "foreach", "fused")


def build_optimizer(
    name: str,
    groups: list[dict],
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    kernel: str = "auto",
) -> torch.optim.Optimizer:
    """``sgd`` or ``lars`` over ``groups`` (see :func:`split_decay_groups`).

    ``kernel``: ``loop`` (one small kernel per tensor), ``foreach`` (multi-tensor kernels),
    ``fused`` (one kernel per group; SGD only) or ``auto`` (``foreach`` on a GPU, else ``loop``).
    """
    positive("optimizer.lr", lr)
    check_optimizer(name, kernel)
    if name == "lars":
        foreach = {"auto": None, "loop": False, "foreach": True}[kernel]
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, foreach=foreach)
    clean = [{k: v for k, v in g.items() if k != "lars_exclude"} for g in groups]
    options = {
        "loop": {"foreach": False},
        "foreach": {"foreach": True},
        "fused": {"fused": True},
    }.get(kernel, {})
    return torch.optim.SGD(clean, lr=lr, momentum=momentum, weight_decay=weight_decay, **options)


def check_optimizer(name: str, kernel: str = "auto") -> None:
    """Refuse an unknown optimizer or kernel, or a kernel the optimizer lacks, before training."""
    if name not in ("sgd", "lars"):
        raise ConfigError(f"optimizer.name={name!r} is unknown: choose 'sgd' or 'lars'")
    if kernel not in OPTIMIZER_KERNELS:
        raise ConfigError(
            f"optimizer.kernel={kernel!r} is unknown: choose one of {', '.join(OPTIMIZER_KERNELS)}"
        )
    if name == "lars" and kernel == "fused":
        raise ConfigError(
            "optimizer.kernel=fused exists only for optimizer.name=sgd: use "
            "optimizer.kernel=foreach with LARS"
        )


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int
) -> dict[str, Any]:
    """Lightning's ``lr_scheduler`` entry: :func:`warmup_cosine` stepped every optimizer step."""
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup_steps, total_steps)
    )
    return {"scheduler": scheduler, "interval": "step"}


def warmup_cosine(
    step: int, warmup_steps: int, total_steps: int, final_ratio: float = 0.0
) -> float:
    """Learning-rate multiplier: linear warm-up to 1, then a half cosine down to ``final_ratio``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
