"""Relation diagnostics on features whose answer is known, linear evaluation, plots."""

from __future__ import annotations

import math

import pytest
import torch

from reco_lightning.eval.linear import LinearProtocol, linear_evaluation, topk_accuracy
from reco_lightning.metrics.diagnostics import (
    alignment,
    class_cosines,
    neighbour_purity,
    relation_diagnostics,
    uniformity,
)


def two_clusters(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0 near e1, class 1 near e2 (orthogonal): well separated."""
    generator = torch.Generator().manual_seed(0)
    centres = torch.eye(8)[:2] * 10
    labels = torch.arange(2).repeat_interleave(n // 2)
    features = centres[labels] + 0.1 * torch.randn(n, 8, generator=generator)
    return features, labels


def test_separated_clusters_have_purity_one_and_the_expected_gap():
    features, labels = two_clusters()
    assert neighbour_purity(features, labels, k=10) == 1.0
    same, diff = class_cosines(features, labels)
    assert same == pytest.approx(1.0, abs=2e-3)  # nearly identical directions within a class
    assert diff == pytest.approx(0.0, abs=2e-2)  # orthogonal centres
    d = relation_diagnostics(features, labels)
    assert d["cos_gap"] == pytest.approx(1.0, abs=3e-2)
    assert d["purity@10"] == 1.0 and "alignment" not in d


def test_purity_of_mixed_labels_is_the_same_label_share():
    features, labels = two_clusters()
    shuffled = labels[torch.randperm(labels.shape[0], generator=torch.Generator().manual_seed(1))]
    # a cluster holds 20 points; with labels independent of position purity is about 1/2
    assert 0.25 < neighbour_purity(features, shuffled, k=19) < 0.75


def test_class_cosines_by_hand():
    features = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    same, diff = class_cosines(features, labels, chunk_size=2)
    assert same == pytest.approx(1.0) and diff == pytest.approx(0.0)


def test_uniformity_of_identical_features_is_zero_and_of_antipodes_known():
    identical = torch.ones(10, 4)
    assert uniformity(identical) == pytest.approx(0.0, abs=1e-6)  # log E exp(0)
    antipodes = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert uniformity(antipodes) == pytest.approx(-8.0, abs=1e-5)  # |x - y|^2 = 4, t = 2
    spread = torch.randn(500, 64, generator=torch.Generator().manual_seed(0))
    assert uniformity(spread, chunk_size=100) < -3.5  # near the floor of -4


def test_alignment_by_hand():
    view1 = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    view2 = torch.tensor([[0.0, 1.0], [0.0, 5.0]])
    assert alignment(view1, view2) == pytest.approx((2.0 + 0.0) / 2)  # |e1 - e2|^2 = 2, then 0


def test_topk_accuracy_by_hand():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.7], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 0])
    assert topk_accuracy(logits, labels, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(logits, labels, 2) == pytest.approx(2 / 3)


def test_linear_evaluation_learns_separable_features():
    features, labels = two_clusters(200)
    result = linear_evaluation(
        features[::2],
        labels[::2],
        features[1::2],
        labels[1::2],
        2,
        LinearProtocol(epochs=10, batch_size=16),
        progress=False,
    )
    assert result["top1"] == 1.0 and result["protocol"]["epochs"] == 10
    assert math.isclose(result["protocol"]["lr_scaled"], 0.1 * 16 / 256)


def test_linear_protocol_rejects_bad_settings():
    from reco_lightning.errors import ConfigError

    with pytest.raises(ConfigError, match="linear.lr"):
        LinearProtocol(lr=0)
