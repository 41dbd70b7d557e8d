"""Backbones: torchvision ResNets, optionally narrower, with the small-image stem.

CIFAR-size images (64 px or less) lose most of their resolution in ResNet's 7x7 stride-2
stem and max-pool, so ``small_stem`` swaps them for a 3x3 stride-1 convolution, as is usual
in SSL work on CIFAR. Widths below 64 train many times faster on a CPU (the quick defaults).
"""

from __future__ import annotations

import difflib
import importlib.util

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from ..errors import ConfigError

#: block type and blocks per stage of each supported depth (as in torchvision)
RESNET_LAYOUTS: dict[str, tuple[type[nn.Module], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}


class _WidthResNet(ResNet):
    """torchvision's ResNet with stage widths ``width * (1, 2, 4, 8)``, built by its own
    ``_make_layer``: blocks, initialisation and state-dict names are torchvision's."""

    def __init__(self, block: type[nn.Module], layers: list[int], width: int) -> None:
        super().__init__(block, layers)  # type: ignore[arg-type]
        if width == 64:
            return
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._make_layer(block, width, layers[0])  # type: ignore[arg-type]
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)  # type: ignore[arg-type]
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)  # type: ignore[arg-type]
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)  # type: ignore[arg-type]
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")


def zero_init_residuals(net: nn.Module) -> None:
    """Set the scale of each residual block's last BatchNorm to zero (Goyal et al., 2017).

    Every block then starts as its shortcut, so the untrained network is shallow and passes
    the image's structure through, as SimSiam's reference code starts; it is what lets BYOL
    learn on the bundled digits' short schedule (docs/benchmarks.md, "The main job").
    torchvision's own ``zero_init_residual`` misses the stages that a narrower width rebuilds.
    """
    for module in net.modules():
        if isinstance(module, Bottleneck):
            nn.init.zeros_(module.bn3.weight)
        elif isinstance(module, BasicBlock):
            nn.init.zeros_(module.bn2.weight)


def build_backbone(
    name: str = "resnet18",
    width: int = 64,
    small_stem: bool = False,
    zero_init_residual: bool = False,
) -> tuple[nn.Module, int]:
    """Return ``(backbone, feature_dim)``; the backbone maps images to pooled features.

    Weights are always random: self-supervised training starts from scratch, and this
    package never downloads anything. ``width`` scales every stage (64 = torchvision's).
    ``timm/<model>`` builds a timm model instead (:func:`timm_backbone`; the other
    arguments then do not apply).
    """
    if name.startswith(TIMM_PREFIX):
        return timm_backbone(name.removeprefix(TIMM_PREFIX))
    if name not in RESNET_LAYOUTS:
        raise ConfigError(
            f"backbone.name={name!r} is not supported: choose one of {sorted(RESNET_LAYOUTS)}, "
            f"or timm/<model> for any timm model"
        )
    if width <= 0 or width % 4:
        raise ConfigError(
            f"backbone.width={width} must be a positive multiple of 4 (64 = torchvision)"
        )
    block, layers = RESNET_LAYOUTS[name]
    net = _WidthResNet(block, layers, width)
    feature_dim = width * 8 * block.expansion  # type: ignore[attr-defined]
    net.fc = nn.Identity()  # type: ignore[assignment]
    if small_stem:
        net.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()  # type: ignore[assignment]
    if zero_init_residual:
        zero_init_residuals(net)
    return net, feature_dim


#: ``backbone.name`` prefix of a model built by timm
TIMM_PREFIX = "timm/"


def timm_backbone(model: str) -> tuple[nn.Module, int]:
    """``timm.create_model(model, num_classes=0)`` (random weights, pooled features) and its
    feature dimension; a missing timm or an unknown model is a one-line ConfigError.

    >>> net, dim = timm_backbone("resnet10t")  # doctest: +SKIP
    """
    if importlib.util.find_spec("timm") is None:
        raise ConfigError(
            f'backbone.name={TIMM_PREFIX}{model} needs timm: pip install "reco_lightning[timm]"'
        )
    import timm

    if not timm.is_model(model):
        close = difflib.get_close_matches(model, timm.list_models(), n=1)
        hint = (
            f"did you mean {TIMM_PREFIX}{close[0]}?" if close else "timm.list_models() lists them"
        )
        raise ConfigError(
            f"backbone.name={TIMM_PREFIX}{model}: timm has no model {model!r}: {hint}"
        )
    net = timm.create_model(model, pretrained=False, num_classes=0)
    # forward's width: a pre-logits head (MobileNetV3's conv_head) exceeds the trunk's num_features
    return net, int(getattr(net, "head_hidden_size", None) or net.num_features)
