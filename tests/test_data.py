"""Tests of reco_lightning.data: datasets, views and the data module (all offline)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from reco_lightning.data import (
    DatasetSplits,
    SSLDataModule,
    build_datasets,
    eval_view,
    strong_view,
    weak_view,
)
from reco_lightning.errors import ConfigError, ImageLoadError

SHARED_CIFAR10 = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


# --------------------------------------------------------------------------- helpers
def _flatten(transform) -> list:
    """All leaf transforms of a pipeline, looking inside Compose/RandomApply."""
    found = []
    for t in getattr(transform, "transforms", []):
        found.append(t)
        found.extend(_flatten(t))
    return found


def _unnormalize(x: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    return x * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)


def _red(size: int = 32) -> Image.Image:
    return Image.new("RGB", (size, size), (255, 0, 0))


def _write_png(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(str(path))) % 2**32)
    arr = np.clip(
        np.array(colour, dtype=np.int16) + rng.integers(-20, 20, (size[1], size[0], 3)), 0, 255
    ).astype(np.uint8)
    Image.fromarray(arr).save(path)


def _make_folder(root: Path, eval_split: str = "val", size=(20, 24), n_train=3, n_eval=2) -> Path:
    colours = {"cat": (200, 40, 40), "dog": (40, 40, 200)}
    for cls, colour in colours.items():
        for i in range(n_train):
            _write_png(root / "train" / cls / f"{i}.png", size, colour)
        for i in range(n_eval):
            _write_png(root / eval_split / cls / f"{i}.png", size, colour)
    return root


@pytest.fixture(scope="module")
def digits() -> DatasetSplits:
    return build_datasets("digits", None, None, False)


# --------------------------------------------------------------------------- digits
def test_digits_builds_offline_with_stratified_split(digits: DatasetSplits) -> None:
    assert digits.name == "digits"
    assert digits.num_classes == 10
    assert digits.image_size == 32
    assert len(digits.train) + len(digits.val) == 1797
    assert len(digits.val) == 360  # ceil(0.2 * 1797)
    train_counts = Counter(int(y) for y in digits.train.labels)
    val_counts = Counter(int(y) for y in digits.val.labels)
    assert set(val_counts) == set(range(10))
    for c in range(10):  # stratified: each class holds ~20 % of its images out
        total = train_counts[c] + val_counts[c]
        assert abs(val_counts[c] - 0.2 * total) <= 1.0
    image, label = digits.train[0]
    assert isinstance(image, Image.Image) and image.mode == "RGB"
    assert image.size == (32, 32)
    assert isinstance(label, int) and 0 <= label < 10
    arr = np.asarray(image)
    assert (arr[..., 0] == arr[..., 1]).all() and arr.max() > 200  # gray digit, 0..255 range
    # Train-split statistics, gray so equal per channel, in a plausible range.
    assert digits.mean[0] == digits.mean[1] == digits.mean[2]
    assert 0.05 < digits.mean[0] < 0.6 and 0.05 < digits.std[0] < 0.6


def test_digits_split_is_deterministic_per_seed(digits: DatasetSplits) -> None:
    again = build_datasets("digits", None, None, False)
    np.testing.assert_array_equal(again.val.labels, digits.val.labels)
    np.testing.assert_array_equal(again.val.images, digits.val.images)
    other = build_datasets("digits", None, None, False, seed=1)
    assert not np.array_equal(other.val.images, digits.val.images)


def test_digits_custom_size_and_fraction() -> None:
    splits = build_datasets("digits", None, 16, False, val_fraction=0.5)
    image, _ = splits.val[3]
    assert image.size == (16, 16)
    assert abs(len(splits.val) - 1797 / 2) <= 1


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_digits_bad_val_fraction(fraction: float) -> None:
    with pytest.raises(ConfigError, match="dataset.val_fraction"):
        build_datasets("digits", None, None, False, val_fraction=fraction)


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(ConfigError) as info:
        build_datasets("mnist", None, None, False)
    message = str(info.value)
    assert "dataset.name" in message
    for choice in ("digits", "cifar10", "cifar100", "stl10", "imagefolder"):
        assert choice in message


def test_bad_image_size() -> None:
    with pytest.raises(ConfigError, match="dataset.image_size"):
        build_datasets("digits", None, 0, False)


# --------------------------------------------------------------------------- data module
def test_train_batch_without_weak_view() -> None:
    dm = SSLDataModule(batch_size=8)
    assert (dm.num_classes, dm.image_size, dm.train_size) == (10, 32, 1437)
    loader = dm.train_dataloader()
    assert len(loader) == 1437 // 8  # drop_last
    torch.manual_seed(0)
    batch = next(iter(loader))
    assert set(batch) == {"strong", "label"}
    assert len(batch["strong"]) == 2
    for view in batch["strong"]:
        assert view.shape == (8, 3, 32, 32) and view.dtype == torch.float32
    assert batch["label"].shape == (8,) and batch["label"].dtype == torch.int64
    # The two strong views of the same image are independent draws.
    assert not torch.allclose(batch["strong"][0], batch["strong"][1])


def test_train_batch_with_weak_view() -> None:
    dm = SSLDataModule(batch_size=4, weak_view=True, image_size=24)
    batch = next(iter(dm.train_dataloader()))
    assert batch["weak"].shape == (4, 3, 24, 24)
    assert [v.shape for v in batch["strong"]] == [(4, 3, 24, 24)] * 2


def test_train_loader_shuffles_per_epoch_and_repeats_with_the_seed() -> None:
    dm = SSLDataModule(batch_size=64)
    loader = dm.train_dataloader()
    first = next(iter(loader))
    loader.sampler.set_epoch(1)
    other_epoch = next(iter(loader))
    again = next(iter(SSLDataModule(batch_size=64).train_dataloader()))
    other_seed = next(iter(SSLDataModule(batch_size=64, seed=1).train_dataloader()))
    assert not torch.equal(first["label"], other_epoch["label"])
    assert not torch.equal(first["label"], other_seed["label"])
    # same seed and epoch: the same images with the same augmentations, whatever the global RNG did
    assert torch.equal(first["label"], again["label"])
    assert torch.equal(first["strong"][0], again["strong"][0])


def test_views_do_not_touch_the_global_rng() -> None:
    loader = SSLDataModule(batch_size=16, weak_view=True).train_dataloader()
    state = torch.get_rng_state()
    next(iter(loader))
    assert torch.equal(state, torch.get_rng_state())


def test_resumed_loader_continues_with_the_next_batch() -> None:
    dm = SSLDataModule(batch_size=64)
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(3)
    batches = [b["label"] for _, b in zip(range(4), loader)]
    resumed = SSLDataModule(batch_size=64)
    resumed.load_state_dict({"epoch": 3, "batches_done": 2})
    continued = [b["label"] for _, b in zip(range(2), resumed.train_dataloader())]
    assert torch.equal(continued[0], batches[2]) and torch.equal(continued[1], batches[3])


def test_train_sampler_gives_each_rank_its_slice_of_the_global_batch(monkeypatch) -> None:
    from reco_lightning.data import samplers

    single = list(samplers.TrainSampler(100, batch_size=8, seed=5))
    shares = []
    for rank in range(2):
        monkeypatch.setattr(samplers, "world_size", lambda: 2)
        monkeypatch.setattr(samplers, "rank", lambda rank=rank: rank)
        shares.append(list(samplers.TrainSampler(100, batch_size=4, seed=5)))
    assert len(shares[0]) == len(shares[1]) == 48  # 12 global batches of 8, 4 per rank
    for batch in range(12):
        global_batch = single[batch * 8 : (batch + 1) * 8]
        assert (
            shares[0][batch * 4 : (batch + 1) * 4] + shares[1][batch * 4 : (batch + 1) * 4]
            == global_batch
        )


def test_eval_sampler_covers_every_image_once_over_ranks(monkeypatch) -> None:
    from reco_lightning.data import samplers

    seen = []
    for rank in range(3):
        monkeypatch.setattr(samplers, "world_size", lambda: 3)
        monkeypatch.setattr(samplers, "rank", lambda rank=rank: rank)
        sampler = samplers.EvalSampler(10)
        seen += list(sampler)
        assert len(sampler) == len(list(sampler))
    assert sorted(seen) == list(range(10))


def test_val_loaders_are_bank_then_queries_in_order() -> None:
    dm = SSLDataModule(batch_size=32, eval_batch_size=100)
    bank, queries = dm.val_dataloader()
    assert len(bank.dataset) == dm.train_size == 1437
    assert len(queries.dataset) == dm.val_size == 360
    assert len(queries) == 4  # no drop_last: 360 / 100 rounded up
    x1, y1 = next(iter(queries))
    x2, y2 = next(iter(queries))
    assert x1.shape == (100, 3, 32, 32)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)  # no shuffle, deterministic view
    np.testing.assert_array_equal(y1.numpy(), dm.splits.val.labels[:100])


def _loader_contents(loader) -> list:
    return [batch for batch in loader]


def test_small_eval_views_are_made_once_and_equal_the_per_image_views(monkeypatch) -> None:
    from reco_lightning.data import datamodule as dm_module

    dm = SSLDataModule(batch_size=32, eval_batch_size=100, image_size=16)
    calls = []
    transform = dm.eval_transform
    dm.eval_transform = lambda image: calls.append(1) or transform(image)
    cached = [_loader_contents(loader) for loader in dm.val_dataloader()]
    made = len(calls)
    assert made == dm.train_size + dm.val_size
    again = [_loader_contents(loader) for loader in dm.val_dataloader()]
    assert len(calls) == made  # the second epoch made no view

    monkeypatch.setattr(dm_module, "EVAL_CACHE_BYTES", 0)  # too big for the cache: per image
    fresh = SSLDataModule(batch_size=32, eval_batch_size=100, image_size=16)
    streamed = [_loader_contents(loader) for loader in fresh.val_dataloader()]
    for a, b, c in zip(cached, again, streamed):
        assert len(a) == len(b) == len(c)
        for (xa, ya), (xb, yb), (xc, yc) in zip(a, b, c):
            assert torch.equal(xa, xb) and torch.equal(xa, xc)
            assert torch.equal(ya, yb) and torch.equal(ya, yc)


@pytest.mark.parametrize("cache_bytes", [None, 0])
def test_alignment_views_are_fixed_whether_kept_or_remade(monkeypatch, cache_bytes) -> None:
    from reco_lightning.data import datamodule as dm_module

    if cache_bytes is not None:
        monkeypatch.setattr(dm_module, "EVAL_CACHE_BYTES", cache_bytes)
    dm = SSLDataModule(batch_size=32, eval_batch_size=50, image_size=16)
    first = _loader_contents(dm.alignment_loader(120))
    torch.manual_seed(123)  # the global RNG must not matter
    second = _loader_contents(dm.alignment_loader(120))
    assert [b["strong"][0].shape[0] for b in first] == [50, 50, 20]
    for a, b in zip(first, second):
        assert torch.equal(a["strong"][0], b["strong"][0]) and torch.equal(
            a["strong"][1], b["strong"][1]
        )
        assert not torch.equal(a["strong"][0], a["strong"][1])  # two different views
    assert (cache_bytes is None) == ("alignment-120" in dm._eval_cache)


def test_kept_and_remade_alignment_views_are_the_same(monkeypatch) -> None:
    from reco_lightning.data import datamodule as dm_module

    kept = _loader_contents(SSLDataModule(batch_size=32, image_size=16).alignment_loader(64))
    monkeypatch.setattr(dm_module, "EVAL_CACHE_BYTES", 0)
    remade = _loader_contents(SSLDataModule(batch_size=32, image_size=16).alignment_loader(64))
    for a, b in zip(kept, remade, strict=True):
        assert torch.equal(a["strong"][0], b["strong"][0]) and torch.equal(a["label"], b["label"])


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"batch_size": 0}, "dataset.batch_size"),
        ({"batch_size": 2000}, "dataset.batch_size"),
        ({"num_workers": -1}, "dataset.num_workers"),
        ({"eval_batch_size": 0}, "dataset.eval_batch_size"),
        ({"crop_scale": (0.0, 1.0)}, "dataset.crop_scale"),
    ],
)
def test_datamodule_rejects_bad_settings(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        SSLDataModule(**kwargs)


def test_batch_size_message_names_sizes() -> None:
    with pytest.raises(ConfigError) as info:
        SSLDataModule(batch_size=1500)
    assert "1437 training images of 'digits'" in str(info.value)
    assert "lower dataset.batch_size" in str(info.value)


def test_batch_size_checked_per_device_under_ddp() -> None:
    dm = SSLDataModule(batch_size=512)
    dm.trainer = SimpleNamespace(world_size=4)  # 1437 / 4 = 360 images per device
    with pytest.raises(ConfigError, match="dataset.batch_size=512"):
        dm.train_dataloader()
    dm.trainer = SimpleNamespace(world_size=2)
    assert len(dm.train_dataloader()) == 2


def test_persistent_workers_only_with_workers() -> None:
    dm = SSLDataModule(batch_size=8, persistent_workers=True, num_workers=0)
    assert dm.train_dataloader().persistent_workers is False


# --------------------------------------------------------------------------- views
def test_weak_view_never_changes_colour() -> None:
    torch.manual_seed(0)
    view = weak_view(32, MEAN, STD)
    for _ in range(60):
        out = _unnormalize(view(_red()))
        assert out.shape == (3, 32, 32)
        assert out[0].min() > 0.95 and out[1:].abs().max() < 0.05


def test_strong_view_is_sometimes_grayscale() -> None:
    torch.manual_seed(0)
    view = strong_view(32, MEAN, STD)
    gray = 0
    draws = 200
    for _ in range(draws):
        out = _unnormalize(view(_red()))
        spread = (out.max(dim=0).values - out.min(dim=0).values).mean()
        gray += int(spread < 0.02)
    assert 10 <= gray <= 80  # p = 0.2 -> expected 40


def test_strong_view_changes_colour_often() -> None:
    torch.manual_seed(0)
    view = strong_view(32, MEAN, STD)
    reds = [_unnormalize(view(_red()))[0].mean().item() for _ in range(50)]
    assert np.std(reds) > 0.05  # colour jitter / grayscale vary the red channel


def test_eval_view_is_deterministic_and_resizes() -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    view = eval_view(32, MEAN, STD)
    torch.manual_seed(0)
    a = view(image)
    torch.manual_seed(123)
    b = view(image)
    assert a.shape == (3, 32, 32)
    assert torch.equal(a, b)


@pytest.mark.parametrize("size", [32, 48, 63])
def test_no_blur_below_64(size: int) -> None:
    leaves = _flatten(strong_view(size, MEAN, STD))
    assert not any(isinstance(t, v2.GaussianBlur) for t in leaves)


@pytest.mark.parametrize(("size", "kernel"), [(64, 7), (96, 9), (224, 23)])
def test_blur_at_64_and_above(size: int, kernel: int) -> None:
    pipeline = strong_view(size, MEAN, STD)
    blurs = [t for t in _flatten(pipeline) if isinstance(t, v2.GaussianBlur)]
    assert len(blurs) == 1
    assert list(blurs[0].kernel_size) == [kernel, kernel]
    applies = [
        t for t in pipeline.transforms if isinstance(t, v2.RandomApply) and blurs[0] in t.transforms
    ]
    assert len(applies) == 1 and applies[0].p == 0.5
    assert strong_view(size, MEAN, STD)(_red(size)).shape == (3, size, size)


def test_weak_view_has_only_geometry() -> None:
    leaves = _flatten(weak_view(96, MEAN, STD, crop_scale=(0.5, 0.9)))
    kinds = {type(t) for t in leaves}
    assert not kinds & {v2.ColorJitter, v2.RandomGrayscale, v2.GaussianBlur}
    crops = [t for t in leaves if isinstance(t, v2.RandomResizedCrop)]
    assert crops[0].scale == (0.5, 0.9)


def test_crop_scale_reaches_strong_view() -> None:
    dm = SSLDataModule(batch_size=8, crop_scale=(0.3, 0.8), weak_view=True)
    for pipeline in (dm.strong_transform, dm.weak_transform):
        crop = next(t for t in _flatten(pipeline) if isinstance(t, v2.RandomResizedCrop))
        assert crop.scale == (0.3, 0.8)


# --------------------------------------------------------------------------- imagefolder
def test_imagefolder_builds_and_infers_small_size(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "folder")
    splits = build_datasets("imagefolder", str(root), None, False)
    assert splits.num_classes == 2
    assert splits.image_size == 20  # shorter side of the 20x24 images
    assert (len(splits.train), len(splits.val)) == (6, 4)
    dm = SSLDataModule(name="imagefolder", root=str(root), batch_size=4, weak_view=True)
    batch = next(iter(dm.train_dataloader()))
    assert batch["strong"][0].shape == (4, 3, 20, 20)
    assert batch["weak"].shape == (4, 3, 20, 20)
    x, y = next(iter(dm.val_dataloader()[1]))
    assert x.shape == (4, 3, 20, 20)
    assert y.tolist() == [0, 0, 1, 1]


def test_imagefolder_large_images_default_to_224(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "big", size=(80, 100), n_train=1, n_eval=1)
    assert build_datasets("imagefolder", str(root), None, False).image_size == 224
    assert build_datasets("imagefolder", str(root), 128, False).image_size == 128


def test_imagefolder_test_split_and_train_class_mapping(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "t", eval_split="test")
    # Remove 'cat' from test/: 'dog' must keep train's label 1, not become 0.
    for f in (root / "test" / "cat").iterdir():
        f.unlink()
    (root / "test" / "cat").rmdir()
    splits = build_datasets("imagefolder", str(root), None, False)
    assert [splits.val[i][1] for i in range(len(splits.val))] == [1, 1]


def test_imagefolder_eval_split_with_unknown_class(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "u")
    _write_png(root / "val" / "zebra" / "0.png", (20, 24), (0, 0, 0))
    with pytest.raises(ConfigError, match="zebra"):
        build_datasets("imagefolder", str(root), None, False)


def test_corrupt_image_raises_image_load_error(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "c")
    bad = root / "train" / "cat" / "9_bad.png"
    bad.write_bytes(b"this is not a png")
    splits = build_datasets("imagefolder", str(root), None, False)
    index = next(i for i, (p, _) in enumerate(splits.train.samples) if p == str(bad))
    with pytest.raises(ImageLoadError) as info:
        splits.train[index]
    assert f"cannot read image {bad}:" in str(info.value)


def test_corrupt_image_error_survives_worker(tmp_path: Path) -> None:
    root = _make_folder(tmp_path / "w", n_train=1, n_eval=1)
    bad = root / "val" / "dog" / "0.png"
    bad.write_bytes(b"\x89PNG garbage")
    dm = SSLDataModule(name="imagefolder", root=str(root), batch_size=1, num_workers=1)
    with pytest.raises(ImageLoadError) as info:
        list(dm.val_dataloader()[1])
    assert f"cannot read image {bad}:" in str(info.value)


def _no_train(root: Path) -> Path:
    (root / "val" / "a").mkdir(parents=True)
    return root


def _no_eval(root: Path) -> Path:
    _write_png(root / "train" / "a" / "0.png", (8, 8), (1, 2, 3))
    return root


def _empty_train(root: Path) -> Path:
    (root / "train").mkdir(parents=True)
    (root / "val").mkdir()
    return root


def _classes_without_images(root: Path) -> Path:
    (root / "train" / "a").mkdir(parents=True)
    (root / "val" / "a").mkdir(parents=True)
    return root


def _empty_val(root: Path) -> Path:
    _write_png(root / "train" / "a" / "0.png", (8, 8), (1, 2, 3))
    (root / "val" / "a").mkdir(parents=True)
    return root


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda p: p / "does_not_exist", "does not exist"),
        (_no_train, "no train/"),
        (_no_eval, "neither a val/ nor a test/"),
        (_empty_train, "train/ holds no images"),
        (_classes_without_images, "train/ holds no images"),
        (_empty_val, "val/ holds no images"),
    ],
)
def test_imagefolder_layout_errors(tmp_path: Path, make, fragment: str) -> None:
    root = make(tmp_path)
    with pytest.raises(ConfigError) as info:
        build_datasets("imagefolder", str(root), None, False)
    assert "dataset.root" in str(info.value)
    assert fragment in str(info.value)


def test_imagefolder_needs_root() -> None:
    with pytest.raises(ConfigError, match="dataset.root"):
        build_datasets("imagefolder", None, None, False)


# --------------------------------------------------------------------------- torchvision
@pytest.mark.parametrize("name", ["cifar10", "cifar100", "stl10"])
def test_torchvision_missing_files_without_download(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_datasets(name, str(tmp_path), None, False)
    assert "dataset.download" in str(info.value)
    assert "dataset.root" in str(info.value)
    assert not any(tmp_path.iterdir())  # nothing was downloaded or written


# --------------------------------------------------------------------------- shared data
def test_shared_cifar10_imagefolder() -> None:
    if not (SHARED_CIFAR10 / "train").is_dir():
        pytest.skip(f"shared CIFAR-10 ImageFolder copy not found at {SHARED_CIFAR10}")
    splits = build_datasets("imagefolder", str(SHARED_CIFAR10), None, False)
    assert splits.num_classes == 10
    assert splits.image_size == 32
    assert len(splits.val) == 10_000
    image, label = splits.val[0]
    assert image.size == (32, 32) and image.mode == "RGB" and label == 0
