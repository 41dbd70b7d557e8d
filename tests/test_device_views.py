"""Views drawn per batch on the device: per-image randomness, parameter ranges, training."""

from __future__ import annotations

import pytest
import torch

from reco_lightning.data import SSLDataModule
from reco_lightning.data.device_views import DeviceViews
from reco_lightning.methods import METHODS
from reco_lightning.run.train import train


@pytest.fixture
def views() -> DeviceViews:
    return DeviceViews(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), crop_scale=(0.2, 1.0))


def test_every_image_gets_its_own_draw(views):
    torch.manual_seed(0)
    same_image = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8).repeat(16, 1, 1, 1)
    out = views(same_image, weak=True)
    for batch in (*out["strong"], out["weak"]):
        flat = batch.flatten(1)
        distinct = {tuple(row[:64].tolist()) for row in flat}
        assert len(distinct) == 16  # no two copies of the image came out the same
    assert not torch.equal(out["strong"][0], out["strong"][1])  # two independent strong views


def test_parameters_stay_in_the_per_image_pipelines_ranges(views):
    torch.manual_seed(0)
    views(torch.randint(0, 256, (2000, 3, 32, 32), dtype=torch.uint8))
    crop, jitter, grayscale, flip = views.strong
    corners = crop._params["src"].float()  # (B, 4, 2) pixel corners, inclusive
    width = corners[:, 1, 0] - corners[:, 0, 0] + 1
    height = corners[:, 2, 1] - corners[:, 1, 1] + 1
    area = width * height / (32 * 32)
    assert area.min() >= 0.2 - 0.05 and area.max() <= 1.0  # scale (0.2, 1.0), up to pixel rounding
    ratio = width / height
    assert ratio.min() >= 3 / 4 - 0.1 and ratio.max() <= 4 / 3 + 0.15  # ratio (3/4, 4/3), rounded
    for name, low, high in (
        ("brightness_factor", 0.6, 1.4),
        ("contrast_factor", 0.6, 1.4),
        ("saturation_factor", 0.6, 1.4),
        ("hue_factor", -0.1, 0.1),
    ):
        factor = jitter._params[name]
        assert factor.min() >= low and factor.max() <= high, name
        assert factor.std() > 0.05 * (high - low), name  # drawn per image, not once per batch
    for module, p in ((jitter, 0.8), (grayscale, 0.2), (flip, 0.5)):
        applied = module._params["batch_prob"].float().mean().item()
        assert abs(applied - p) < 0.05, type(module).__name__


def test_output_is_normalised_float_of_the_right_shape(views):
    out = views(torch.full((4, 3, 32, 32), 128, dtype=torch.uint8))
    assert out["strong"][0].dtype == torch.float32 and out["strong"][0].shape == (4, 3, 32, 32)
    with pytest.raises(TypeError, match="uint8"):
        views(torch.zeros(2, 3, 32, 32))


def test_datamodule_keeps_uint8_rows_and_draws_views_after_transfer():
    dm = SSLDataModule(batch_size=32, weak_view=True, augment_on="device")
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].dtype == torch.uint8 and batch["images"].shape == (32, 3, 32, 32)
    views = dm.on_after_batch_transfer(batch, 0)
    assert [v.shape for v in views["strong"]] == [(32, 3, 32, 32)] * 2 and views["weak"].shape == (
        32,
        3,
        32,
        32,
    )
    assert torch.equal(views["label"], batch["label"])


def test_unknown_augment_on_names_the_setting():
    from reco_lightning.errors import ConfigError

    with pytest.raises(ConfigError, match="dataset.augment_on"):
        SSLDataModule(augment_on="gpu")


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_trains_with_views_on_the_device(compose_config, tiny, tmp_path, method):
    cfg = compose_config(
        f"+method={method}",
        "+reco=on",
        *tiny,
        "dataset.augment_on=device",
        "trainer.precision=bf16-mixed",
    )
    summary = train(cfg, tmp_path)
    assert summary["steps"] == 3 and 0 <= summary["knn_acc"] <= 1


def test_a_seed_decides_the_views_and_leaves_the_global_rng_alone(views):
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    before = torch.get_rng_state()
    first = views(images, weak=True, seed=1234)
    assert torch.equal(torch.get_rng_state(), before)
    torch.rand(100)  # the global state moves on: the seeded views do not
    again = views(images, weak=True, seed=1234)
    other = views(images, weak=True, seed=1235)
    assert torch.equal(first["strong"][0], again["strong"][0]) and torch.equal(
        first["weak"], again["weak"]
    )
    assert not torch.equal(first["strong"][0], other["strong"][0])
