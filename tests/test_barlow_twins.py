"""Barlow Twins, the fifth method: its loss against hand computations, where its gradient
goes, and ReCo on it (weighted relative to a loss of ~2,000)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from reco_lightning.methods import METHODS
from reco_lightning.methods.barlow_twins import BarlowTwins, barlow_twins_loss

TINY = dict(
    num_classes=10, backbone_width=8, small_stem=True, proj_hidden_dim=32, proj_output_dim=16
)
CONF = Path(__file__).resolve().parents[1] / "conf" / "method"


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():  # self.log without a Trainer only warns
        warnings.simplefilter("ignore")
        yield


def test_the_loss_of_identical_decorrelated_views_is_zero():
    # two dimensions over four samples, each standardised already, uncorrelated with each other
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert barlow_twins_loss(z, z).item() == pytest.approx(0.0, abs=1e-4)


def test_the_loss_counts_the_diagonal_and_weighs_the_off_diagonal():
    z1 = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    z2 = z1[:, [1, 0]]  # the views' dimensions swapped: C = [[0, 1], [1, 0]]
    # diagonal: (1 - 0)^2 * 2 = 2; off-diagonal: 1^2 * 2 = 2, weighed by lambda
    assert barlow_twins_loss(z1, z2, lambda_offdiag=0.25).item() == pytest.approx(
        2 + 0.25 * 2, rel=1e-4
    )
    # scale and shift of a dimension do not matter: each is standardised over the batch
    assert barlow_twins_loss(3 * z1 + 7, z2, 0.25).item() == pytest.approx(2.5, rel=1e-4)


def test_the_loss_starts_near_the_projector_width():
    torch.manual_seed(0)
    z1, z2 = torch.randn(256, 512), torch.randn(256, 512)
    assert 400 < barlow_twins_loss(z1, z2).item() < 700  # ~D for independent views


def _named(model, prefix: str) -> list:
    return [(name, p) for name, p in model.named_parameters() if name.startswith(prefix)]


def test_the_method_loss_trains_backbone_and_projector_only():
    torch.manual_seed(0)
    model = BarlowTwins(reco={"bank_size": 64, "negatives_size": 64}, **TINY)
    model.method_step(torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)).loss.backward()

    def reached(prefix: str) -> list[bool]:
        return [
            p.grad is not None and bool(p.grad.abs().sum() > 0)
            for name, p in model.named_parameters()
            if name.startswith(prefix)
        ]

    # every projector weight (its output bias gets none: the loss standardises each dimension)
    assert all(
        r
        for r, (n, _) in zip(reached("projector."), _named(model, "projector."))
        if n.endswith("weight")
    )
    # the stem, and every block's zero-initialised last BatchNorm scale (the rest of a block
    # gets gradient once that scale has moved off zero)
    assert all(reached("backbone.conv1")) and all(reached("backbone.layer4.1.bn2"))
    assert not any(reached("classifier."))  # the probe learns from its own loss only
    assert all(p.grad is None for p in model.reco.teacher.parameters())  # ReCo's EMA copy


def test_reco_on_barlow_twins_weighs_each_term_against_its_loss():
    torch.manual_seed(0)
    model = BarlowTwins(reco={"bank_size": 64, "negatives_size": 64, "warmup_epochs": 0}, **TINY)
    assert model.reco.scale == "relative" and model.reco.teacher_kind == "ema"
    for queue in (model.reco.bank, model.reco.negatives):
        queue.enqueue(F.normalize(torch.randn(queue.size, 16), dim=1))
    batch = {
        "strong": [torch.randn(8, 3, 16, 16) for _ in range(2)],
        "weak": torch.randn(8, 3, 16, 16),
        "label": torch.zeros(8, dtype=torch.long),
    }
    output = model.method_step(*batch["strong"])
    terms = model.reco_terms(batch, q1=output.q1, k2=output.k2, method_loss=output.loss)
    assert terms.global_ is not None and terms.local is not None
    assert terms.weighted.item() == pytest.approx(2 * output.loss.item(), rel=1e-4)


def test_barlow_is_a_method_of_the_cli_from_its_module_and_preset_alone():
    """Registered by its decorator, found by the package's import of every module, and
    given a schema; its preset is the one YAML beside the other methods'."""
    assert METHODS["barlow"] is BarlowTwins
    assert {path.stem for path in CONF.glob("*.yaml")} == set(METHODS)


def test_the_fifth_method_lives_in_its_two_files_only():
    """Issue 24's test of the seam: Barlow Twins is one module and one preset; no other file
    of the package or its config names its class or its ``+method=`` key."""
    root = Path(__file__).resolve().parents[1]
    files = [*(root / "src" / "reco_lightning").rglob("*.py"), *(root / "conf").rglob("*.yaml")]
    naming = sorted(
        str(path.relative_to(root))
        for path in files
        if "BarlowTwins" in (text := path.read_text()) or re.search(r"\bbarlow\b", text)
    )
    assert naming == ["conf/method/barlow.yaml", "src/reco_lightning/methods/barlow_twins.py"]
