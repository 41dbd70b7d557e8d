"""timm backbones: ``backbone.name=timm/<model>`` builds the model with pooled features; a
missing timm or an unknown model is one line. (Training one on the digits with ReCo and
exporting it: tests/test_export.py, slow.)"""

from __future__ import annotations

import pytest
import torch

from reco_lightning.errors import ConfigError
from reco_lightning.models import backbones, build_backbone

timm = pytest.importorskip("timm", reason='timm is not installed (pip install -e ".[dev]")')


def test_a_timm_model_gives_the_features_its_dimension_says():
    net, dim = build_backbone("timm/mobilenetv3_small_050")
    out = net(torch.randn(2, 3, 16, 16))
    assert (
        out.shape == (2, dim) and dim == 1024
    )  # the pre-logits conv head, wider than num_features


def test_an_unknown_timm_model_gets_a_suggestion():
    with pytest.raises(
        ConfigError, match=r"timm has no model 'resnet181'.*did you mean timm/resnet18"
    ) as info:
        build_backbone("timm/resnet181")
    assert "\n" not in str(info.value)


def test_timm_missing_names_the_extra(monkeypatch):
    monkeypatch.setattr(backbones.importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ConfigError, match=r'pip install "reco_lightning\[timm\]"'):
        build_backbone("timm/resnet18")
