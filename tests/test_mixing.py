"""Pixel-space mixing for ReCo's local term: CutMix's exact lambda, the box, the permutation."""

from __future__ import annotations

import math

import pytest
import torch

from reco_lightning.reco import mixing
from reco_lightning.reco.mixing import MixedBatch, cutmix_box, mix_views

B, C, H, W = 4, 3, 16, 16


def _record_lambdas(monkeypatch) -> list[float]:
    """Record every lam that mix_views draws (before CutMix recomputes it)."""
    drawn: list[float] = []
    original = mixing.sample_lambda

    def recording(alpha: float) -> float:
        value = original(alpha)
        drawn.append(value)
        return value

    monkeypatch.setattr(mixing, "sample_lambda", recording)
    return drawn


def _fixed_lambda(monkeypatch, value: float) -> None:
    monkeypatch.setattr(mixing, "sample_lambda", lambda alpha: value)


def _fixed_centre(monkeypatch, y: int, x: int) -> None:
    centres = iter([y, x] * 100)
    monkeypatch.setattr(torch, "randint", lambda high, size, **kw: torch.tensor([next(centres)]))


# --------------------------------------------------------------------------- CutMix lambda
def test_cutmix_lambda_is_exact_share_of_first_including_clipped_boxes(monkeypatch):
    drawn = _record_lambdas(monkeypatch)
    first = torch.zeros(B, C, H, W)
    second = torch.ones(B, C, H, W)
    clipped = unclipped = 0
    for seed in range(200):
        torch.manual_seed(seed)
        mixed = mix_views(first, second, "cutmix", alpha=1.0)
        share_of_first = (mixed.images == 0).float().mean(dim=(1, 2, 3))
        assert torch.allclose(share_of_first, torch.full((B,), mixed.lam), atol=1e-6), seed
        top, bottom, left, right = mixed.box
        assert 0 <= top <= bottom <= H and 0 <= left <= right <= W
        assert mixed.lam == pytest.approx(1 - (bottom - top) * (right - left) / (H * W))
        # the box before clipping has side 2 * (int(H * sqrt(1 - lam)) // 2)
        ratio = math.sqrt(1 - drawn[-1])
        full_h, full_w = 2 * (int(H * ratio) // 2), 2 * (int(W * ratio) // 2)
        if (bottom - top, right - left) != (full_h, full_w):
            clipped += 1
            assert bottom - top <= full_h and right - left <= full_w
            assert top == 0 or bottom == H or left == 0 or right == W
            # clipping pastes fewer pixels: lam grows above the drawn value
            assert mixed.lam > drawn[-1] - 1e-9
        else:
            unclipped += 1
    assert clipped > 0, "no clipped box in 200 seeds: the border case was not exercised"
    assert unclipped > 0


def test_cutmix_box_clipped_at_top_left_corner(monkeypatch):
    _fixed_centre(monkeypatch, 0, 0)
    # lam .75 -> ratio .5 -> cut 8 -> half 4 -> rows [max(0-4, 0), min(0+4, 16)) = [0, 4)
    assert cutmix_box(H, W, 0.75) == (0, 4, 0, 4)


def test_cutmix_box_clipped_at_bottom_right_corner(monkeypatch):
    _fixed_centre(monkeypatch, 15, 15)
    # rows [15-4, min(15+4, 16)) = [11, 16)
    assert cutmix_box(H, W, 0.75) == (11, 16, 11, 16)


def test_cutmix_box_unclipped_has_side_ratio_sqrt_one_minus_lam(monkeypatch):
    _fixed_centre(monkeypatch, 8, 8)
    assert cutmix_box(H, W, 0.75) == (4, 12, 4, 12)  # 8 x 8 = (1 - .75) * 256 pixels


def test_cutmix_lambda_recomputed_from_clipped_box(monkeypatch):
    _fixed_lambda(monkeypatch, 0.75)
    _fixed_centre(monkeypatch, 0, 0)
    mixed = mix_views(torch.zeros(B, C, H, W), torch.ones(B, C, H, W), "cutmix")
    assert mixed.box == (0, 4, 0, 4)
    assert mixed.lam == pytest.approx(1 - 16 / 256)
    assert (mixed.images == 0).float().mean().item() == pytest.approx(1 - 16 / 256)


def test_cutmix_lambda_unclipped_equals_drawn_value(monkeypatch):
    _fixed_lambda(monkeypatch, 0.75)
    _fixed_centre(monkeypatch, 8, 8)
    mixed = mix_views(torch.zeros(B, C, H, W), torch.ones(B, C, H, W), "cutmix")
    assert mixed.lam == pytest.approx(0.75)


def test_cutmix_lambda_one_pastes_nothing(monkeypatch):
    _fixed_lambda(monkeypatch, 1.0)
    first = torch.rand(B, C, H, W)
    mixed = mix_views(first, torch.rand(B, C, H, W), "cutmix")
    assert mixed.lam == 1.0
    assert torch.equal(mixed.images, first)


# --------------------------------------------------------------------------- CutMix content
def test_cutmix_pastes_from_permuted_second_batch(monkeypatch):
    for seed in range(20):
        torch.manual_seed(seed)
        first = torch.zeros(B, C, H, W)
        second = (
            (torch.arange(B, dtype=torch.float32) + 1).view(B, 1, 1, 1).expand(B, C, H, W).clone()
        )
        _fixed_lambda(monkeypatch, 0.5)  # a box of 11 -> 10 px side, never empty
        mixed = mix_views(first, second, "cutmix")
        top, bottom, left, right = mixed.box
        inside = torch.zeros(H, W, dtype=torch.bool)
        inside[top:bottom, left:right] = True
        assert inside.any()
        for i in range(B):
            source = float(mixed.permutation[i]) + 1
            assert torch.all(mixed.images[i][:, inside] == source), (seed, i)
            assert torch.all(mixed.images[i][:, ~inside] == 0), (seed, i)


def test_cutmix_does_not_modify_inputs():
    torch.manual_seed(0)
    first, second = torch.rand(B, C, H, W), torch.rand(B, C, H, W)
    first_copy, second_copy = first.clone(), second.clone()
    mix_views(first, second, "cutmix")
    assert torch.equal(first, first_copy) and torch.equal(second, second_copy)


@pytest.mark.parametrize("mode", ["cutmix", "mixup"])
def test_permutation_is_a_permutation(mode):
    for seed in range(20):
        torch.manual_seed(seed)
        mixed = mix_views(torch.rand(8, C, H, W), torch.rand(8, C, H, W), mode)
        assert isinstance(mixed, MixedBatch)
        assert mixed.permutation.dtype == torch.long
        assert sorted(mixed.permutation.tolist()) == list(range(8))
        assert mixed.images.shape == (8, C, H, W)


def test_permutation_varies_between_calls():
    torch.manual_seed(0)
    seen = {
        tuple(mix_views(torch.rand(8, C, 4, 4), torch.rand(8, C, 4, 4)).permutation.tolist())
        for _ in range(10)
    }
    assert len(seen) > 1


# --------------------------------------------------------------------------- Mixup
def test_mixup_is_convex_blend_with_permuted_second():
    for seed in range(20):
        torch.manual_seed(seed)
        first, second = torch.rand(B, C, H, W), torch.rand(B, C, H, W)
        mixed = mix_views(first, second, "mixup", alpha=1.0)
        assert 0.0 <= mixed.lam <= 1.0
        assert mixed.box is None
        expected = mixed.lam * first + (1 - mixed.lam) * second[mixed.permutation]
        assert torch.allclose(mixed.images, expected, atol=1e-6)


def test_lambda_in_unit_interval_and_alpha_is_used():
    lams = []
    for seed in range(50):
        torch.manual_seed(seed)
        lams.append(
            mix_views(torch.rand(2, C, 4, 4), torch.rand(2, C, 4, 4), "mixup", alpha=1.0).lam
        )
    assert all(0.0 <= lam <= 1.0 for lam in lams)
    assert max(lams) - min(lams) > 0.5  # Beta(1, 1) is uniform: spread out
    concentrated = [
        mix_views(torch.rand(2, C, 4, 4), torch.rand(2, C, 4, 4), "mixup", alpha=1000.0).lam
        for _ in range(20)
    ]
    assert all(abs(lam - 0.5) < 0.1 for lam in concentrated)


# --------------------------------------------------------------------------- errors
def test_unknown_mode_raises_value_error_naming_setting():
    with pytest.raises(ValueError, match=r"reco\.mix"):
        mix_views(torch.rand(2, C, 4, 4), torch.rand(2, C, 4, 4), "foo")
