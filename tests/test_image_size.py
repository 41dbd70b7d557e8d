"""The image size of an image folder is decided by the data, not by one file.

Deciding ``dataset.image_size`` from the first training file let one stray 1x1 image train
a whole run at 1 px; the size is now the most common one among a sample of image headers,
printed once, with a warning naming files of another size.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
from PIL import Image

from reco_lightning.data import SSLDataModule, build_datasets
from reco_lightning.data import datasets as datasets_module

#: the first file in sort order (``a/`` is the first class, ``000`` the first name)
STRAY = Path("train") / "a" / "000_stray.png"


def _png(path: Path, size: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 120, 200)).save(path)


def _folder(root: Path, sizes: dict[str, list[tuple[int, int]]], stray: bool = False) -> Path:
    """``root/train/<class>/<i>.png`` of the given sizes, a one-image ``val/``, and, with
    ``stray``, a 1x1 image that sorts before every other training file."""
    for label, class_sizes in sizes.items():
        for index, size in enumerate(class_sizes):
            _png(root / "train" / label / f"{index + 1:03d}.png", size)
        _png(root / "val" / label / "0.png", class_sizes[0])
    if stray:
        _png(root / STRAY, (1, 1))
    return root


def _stray_folder(root: Path) -> Path:
    """12 images of 24x24 across 2 classes plus one stray 1x1 image that sorts first."""
    return _folder(root, {"a": [(24, 24)] * 6, "b": [(24, 24)] * 6}, stray=True)


def _build(root: Path, image_size: int | None = None) -> tuple[int, list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        size = build_datasets("imagefolder", str(root), image_size, False).image_size
    return size, [w for w in caught if "reco_lightning" in str(w.message)]


@pytest.fixture(autouse=True)
def _rank_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests run as rank 0 whatever launched them (the line and warning are rank 0's)."""
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK"):
        monkeypatch.delenv(name, raising=False)


def test_one_stray_image_does_not_decide_the_size(tmp_path: Path) -> None:
    root = _stray_folder(tmp_path / "data")
    with pytest.warns(UserWarning, match="000_stray"):
        splits = build_datasets("imagefolder", str(root), None, False)
    assert splits.train.samples[0][0] == str(root / STRAY)  # the stray sorts first, as in the bug
    assert splits.image_size == 24


def test_the_data_module_exposes_the_inferred_size(tmp_path: Path) -> None:
    """``datamodule.image_size`` is what train.py records in config.yaml."""
    with pytest.warns(UserWarning, match="000_stray"):
        dm = SSLDataModule(
            name="imagefolder", root=str(_stray_folder(tmp_path / "data")), batch_size=4
        )
    assert dm.image_size == 24
    batch = next(iter(dm.train_dataloader()))
    assert batch["strong"][0].shape == (4, 3, 24, 24)


def test_a_warning_names_the_stray(tmp_path: Path) -> None:
    root = _stray_folder(tmp_path / "data")
    _, caught = _build(root)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "\n" not in message
    assert "1 of 13 sampled training images" in message
    assert str(root / STRAY) in message and "1x1" in message
    assert "dataset.image_size" in message


def test_one_line_says_the_size_and_how_it_was_inferred(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _build(_stray_folder(tmp_path / "data"))
    lines = [line for line in capsys.readouterr().out.splitlines() if "image size" in line]
    assert lines == [
        "reco_lightning: image size 24 px, inferred from 13 of 13 training images "
        "(dataset.image_size=N to choose)"
    ]


def test_no_warning_when_every_sampled_image_agrees(tmp_path: Path) -> None:
    # 20x24 and 24x20 both train at 20 px (the shorter side): no reason to warn
    root = _folder(tmp_path / "data", {"a": [(20, 24)] * 3, "b": [(24, 20)] * 3})
    size, caught = _build(root)
    assert (size, caught) == (20, [])


def test_an_explicit_size_wins_and_skips_inference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_inference(*args: object, **kwargs: object) -> int:
        raise AssertionError("dataset.image_size was given: no header should be read")

    monkeypatch.setattr(datasets_module, "infer_image_size", no_inference)
    size, caught = _build(_stray_folder(tmp_path / "data"), image_size=1)
    assert (size, caught) == (1, [])
    assert "inferred" not in capsys.readouterr().out


def test_ties_go_to_the_larger_size(tmp_path: Path) -> None:
    # as many 16 px images as 24 px ones, the 16 px ones first in sort order
    root = _folder(tmp_path / "data", {"a": [(16, 16)] * 3, "b": [(24, 24)] * 3})
    size, caught = _build(root)
    assert size == 24
    assert len(caught) == 1 and "3 of 6 sampled" in str(caught[0].message)


def test_large_images_vote_together_for_224(tmp_path: Path) -> None:
    # photos of many sizes above 64 px all mean 224; two small strays do not outvote them
    photos = [(80, 100), (100, 90), (120, 70), (75, 75)]
    root = _folder(tmp_path / "data", {"a": [(32, 32), (32, 32)], "b": photos})
    size, caught = _build(root)
    assert size == 224
    assert len(caught) == 1 and "2 of 6 sampled" in str(caught[0].message)


def test_headers_of_at_most_256_files_spread_over_the_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sample = datasets_module.SIZE_SAMPLE
    count = sample + 44
    paths = []
    for index in range(count):
        path = tmp_path / f"{index:04d}.png"
        _png(path, (8, 8) if index < count // 2 else (12, 12))
        paths.append(str(path))
    opened: list[str] = []
    real_open = Image.open

    def counting_open(path: str, *args: object, **kwargs: object) -> Image.Image:
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    with pytest.warns(UserWarning, match=f"128 of {sample} sampled"):
        # half and half over the whole list, so a tie: the larger size
        assert datasets_module.infer_image_size(paths) == 12
    assert len(opened) == sample == 256 == len(set(opened))
    assert opened[0] == paths[0] and opened[-1] in paths[-2:]  # both ends of the list
    assert f"inferred from {sample} of {count} training images" in capsys.readouterr().out


def test_unreadable_files_are_skipped_and_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _folder(tmp_path / "data", {"a": [(24, 24)] * 3, "b": [(24, 24)] * 3})
    (root / "train" / "a" / "000_bad.png").write_bytes(b"not a png")
    size, caught = _build(root)
    assert (size, caught) == (24, [])
    out = capsys.readouterr().out
    assert re.search(r"inferred from 6 of 7 training images, 1 unreadable skipped", out)


def test_other_ranks_stay_quiet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every DDP rank builds the data; only rank 0 prints and warns, all agree on the size."""
    monkeypatch.setenv("RANK", "1")
    size, caught = _build(_stray_folder(tmp_path / "data"))
    assert (size, caught) == (24, [])
    assert "image size" not in capsys.readouterr().out
