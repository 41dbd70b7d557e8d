"""``reco.scale=relative`` and the per-term gradient diagnostics (``diagnostics.term_grad_steps``).

The relation terms are cross-entropies over a bank (up to ``log(bank_size)`` nats); a method
loss can be 0.3 (BYOL late in training) or 2,000 (Barlow Twins). ``relative`` weighs each term
against the method loss; the diagnostics measure how much of the backbone's update each
term drives.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from reco_lightning.errors import ConfigError
from reco_lightning.methods import MoCo

from .test_reco_mixin import CONFIG, _batch, _tiny


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():  # self.log without a Trainer only warns
        warnings.simplefilter("ignore")
        yield


@pytest.mark.parametrize("method_value", [0.3, 2000.0])
def test_relative_scale_makes_each_term_weigh_w_times_the_method_loss(method_value):
    model = _tiny({**CONFIG, "scale": "relative", "w_global": 1.0, "w_local": 0.5})
    method_loss = torch.tensor(method_value, requires_grad=True)
    torch.manual_seed(1)
    terms = model.terms(*_batch(), method_loss=method_loss)
    assert terms.global_ is not None and terms.local is not None
    # the value: each term is worth w * method loss
    assert terms.weighted.item() == pytest.approx(1.0 * method_value + 0.5 * method_value, rel=1e-5)
    # the weights in effect carry the ratio
    assert float(terms.w_global) == pytest.approx(method_value / terms.global_.item(), rel=1e-5)
    assert float(terms.w_local) == pytest.approx(0.5 * method_value / terms.local.item(), rel=1e-5)
    # the gradient: the terms' own, scaled; none into the method loss through the ratio
    terms.weighted.backward()
    assert method_loss.grad is None
    scaled = model.online[1].weight.grad.clone()
    absolute = _tiny(CONFIG)
    torch.manual_seed(1)
    reference = absolute.terms(*_batch())
    (float(terms.w_global) * reference.global_ + float(terms.w_local) * reference.local).backward()
    assert torch.allclose(scaled, absolute.online[1].weight.grad, rtol=1e-4, atol=1e-6)


def test_relative_scale_without_the_method_loss_says_what_to_pass():
    model = _tiny({**CONFIG, "scale": "relative"})
    with pytest.raises(ConfigError, match="method_loss="):
        model.terms(*_batch())


def test_an_unknown_scale_is_named():
    with pytest.raises(ConfigError, match=r"reco.scale='rel'.*absolute"):
        _tiny({**CONFIG, "scale": "rel"})


def _moco(reco=None) -> MoCo:
    torch.manual_seed(0)
    return MoCo(
        num_classes=10,
        backbone_width=8,
        small_stem=True,
        proj_hidden_dim=32,
        proj_output_dim=16,
        queue_size=64,
        reco=reco,
    )


def test_term_gradient_norms_are_each_terms_own_backbone_gradient(monkeypatch):
    """The logged norm of each term is the norm of the gradient that term alone puts on the
    backbone (computed here by a separate backward pass), and the shares add up to 1."""
    model = _moco()
    logged: dict[str, float] = {}
    monkeypatch.setattr(
        model, "log", lambda name, value, **_: logged.__setitem__(name, float(value))
    )
    x = torch.randn(4, 3, 16, 16)
    features = model.backbone(x)
    first = features.pow(2).mean()
    second = 3.0 * features.mean()
    model._log_term_grads({"method": first, "global": second, "local": None})

    def norm(term):
        model.zero_grad()
        term.backward(retain_graph=True)
        return torch.sqrt(
            sum(p.grad.pow(2).sum() for p in model.backbone.parameters() if p.grad is not None)
        )

    expected = {"method": norm(first).item(), "global": norm(second).item(), "local": 0.0}
    for name, value in expected.items():
        assert logged[f"train/grad_norm_{name}"] == pytest.approx(value, rel=1e-4, abs=1e-8)
    assert sum(logged[f"train/grad_share_{name}"] for name in expected) == pytest.approx(1.0)
    assert logged["train/grad_share_local"] == 0.0
    # the measurement leaves no gradient behind for the optimizer step
    model.zero_grad()
    features = model.backbone(x)
    model._log_term_grads({"method": features.mean()})
    assert all(p.grad is None for p in model.backbone.parameters())


def test_term_grad_steps_must_be_a_whole_number():
    with pytest.raises(ConfigError, match="diagnostics.term_grad_steps"):
        MoCo(num_classes=10, backbone_width=8, small_stem=True, queue_size=64, term_grad_steps=-1)
