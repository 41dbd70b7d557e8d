"""The optimizers: LARS's update against a hand computation, its multi-tensor path
against its loop, and the ``optimizer.kernel`` setting."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from reco_lightning.errors import ConfigError
from reco_lightning.utils.optim import LARS, build_optimizer, split_decay_groups


def test_lars_first_step_matches_hand_computation() -> None:
    weight = nn.Parameter(torch.tensor([3.0, 4.0]))  # norm 5
    weight.grad = torch.tensor([0.6, 0.8])  # with decay 0.1: g + wd*w = [0.9, 1.2], norm 1.5
    optimizer = LARS([weight], lr=0.5, momentum=0.9, weight_decay=0.1, eta=0.02)
    optimizer.step()
    trust = 0.02 * 5.0 / 1.5
    expected = torch.tensor([3.0, 4.0]) - 0.5 * trust * torch.tensor([0.9, 1.2])
    torch.testing.assert_close(weight.detach(), expected)


def test_lars_excluded_group_is_plain_sgd_with_momentum() -> None:
    bias = nn.Parameter(torch.tensor([1.0, -1.0]))
    optimizer = LARS(
        [{"params": [bias], "weight_decay": 0.0, "lars_exclude": True}], lr=0.1, momentum=0.9
    )
    for _ in range(2):
        bias.grad = torch.tensor([1.0, 2.0])
        optimizer.step()
    # buffer: g, then 0.9 g + g = 1.9 g; total step 0.1 * 2.9 g
    torch.testing.assert_close(
        bias.detach(), torch.tensor([1.0, -1.0]) - 0.1 * 2.9 * torch.tensor([1.0, 2.0])
    )


def _small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3), nn.Linear(3, 3)
    )


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 3) -> None:
    torch.manual_seed(1)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        model[:4](torch.randn(16, 6)).pow(2).mean().backward()  # the last layer gets no gradient
        optimizer.step()


@pytest.mark.parametrize("name", ["lars", "sgd"])
def test_every_kernel_gives_the_loop_update(name: str) -> None:
    reference = _small_model()
    _train(
        reference, build_optimizer(name, split_decay_groups(reference), 0.5, 1e-3, kernel="loop")
    )
    kernels = ["foreach", "fused", "auto"] if name == "sgd" else ["foreach", "auto"]
    for kernel in kernels:
        model = _small_model()
        _train(model, build_optimizer(name, split_decay_groups(model), 0.5, 1e-3, kernel=kernel))
        for (key, expected), actual in zip(
            reference.state_dict().items(), model.state_dict().values()
        ):
            torch.testing.assert_close(actual, expected, msg=f"{name} {kernel}: {key}")
    untouched = _small_model()
    torch.testing.assert_close(model[4].weight, untouched[4].weight)  # no gradient, no update


def test_lars_steps_actually_move_the_weights() -> None:
    model = _small_model()
    before = copy.deepcopy(model.state_dict())
    _train(model, build_optimizer("lars", split_decay_groups(model), 0.5, 1e-3))
    assert not torch.equal(before["0.weight"], model.state_dict()["0.weight"])
    assert not torch.equal(before["1.bias"], model.state_dict()["1.bias"])


def test_fused_lars_is_refused_with_the_fix() -> None:
    model = _small_model()
    with pytest.raises(ConfigError, match="optimizer.kernel=fused.*optimizer.kernel=foreach"):
        build_optimizer("lars", split_decay_groups(model), 0.5, 1e-3, kernel="fused")


def test_unknown_kernel_is_refused() -> None:
    model = _small_model()
    with pytest.raises(ConfigError, match="optimizer.kernel='fast' is unknown"):
        build_optimizer("sgd", split_decay_groups(model), 0.5, 1e-3, kernel="fast")
