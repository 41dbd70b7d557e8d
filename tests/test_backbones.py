"""The backbone factory: widths, the small-image stem and the zero-initialised residuals."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from reco_lightning.methods import BYOL, MoCo
from reco_lightning.models import build_backbone


def _blocks(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, (BasicBlock, Bottleneck))]


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_zero_init_residual_starts_every_block_as_its_shortcut(name: str) -> None:
    torch.manual_seed(0)
    net, _ = build_backbone(name, width=8, small_stem=True, zero_init_residual=True)
    net.eval()
    blocks = _blocks(net)
    assert len(blocks) == (8 if name == "resnet18" else 16)  # every stage, also the rebuilt ones
    x = torch.randn(2, blocks[0].conv1.in_channels, 8, 8)
    for block in blocks:
        shortcut = x if block.downsample is None else block.downsample(x)
        with torch.no_grad():
            out = block(x)
        torch.testing.assert_close(out, torch.relu(shortcut))
        x = out


def test_default_init_keeps_the_residual_branches() -> None:
    torch.manual_seed(0)
    net, _ = build_backbone("resnet18", width=8, small_stem=True)
    net.eval()
    block = _blocks(net)[0]
    x = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(block(x), torch.relu(x))


def test_zero_init_residual_reaches_the_target_network_and_still_trains() -> None:
    """The target copies the online init, and the zeroed scales get a gradient."""
    torch.manual_seed(0)
    model = BYOL(
        num_classes=3,
        backbone_width=8,
        small_stem=True,
        zero_init_residual=True,
        proj_hidden_dim=16,
        proj_output_dim=8,
        pred_hidden_dim=16,
    )
    online, target = _blocks(model.backbone), _blocks(model.target_backbone)
    assert all(torch.count_nonzero(b.bn2.weight) == 0 for b in online + target)
    views = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    model.method_step(*views).loss.backward()
    assert all(b.bn2.weight.grad is not None and b.bn2.weight.grad.abs().sum() > 0 for b in online)


@pytest.mark.parametrize("zero_init_residual", [True, False])
def test_methods_pass_the_init_choice_to_the_backbone(zero_init_residual: bool) -> None:
    model = MoCo(
        num_classes=3,
        backbone_width=8,
        small_stem=True,
        queue_size=16,
        zero_init_residual=zero_init_residual,
    )
    nonzero = [bool(torch.count_nonzero(b.bn2.weight)) for b in _blocks(model.backbone)]
    assert nonzero == [not zero_init_residual] * len(nonzero)


def test_methods_start_from_zero_initialised_residuals_by_default() -> None:
    model = MoCo(num_classes=3, backbone_width=8, small_stem=True, queue_size=16)
    assert all(torch.count_nonzero(b.bn2.weight) == 0 for b in _blocks(model.backbone))
