"""Lightning data module producing multi-view training batches and evaluation loaders.

Training batch (``train_dataloader``), a dict collated by the default collate function::

    {"strong": [Tensor(B, 3, S, S), Tensor(B, 3, S, S)],   # two independent strong views
     "weak":   Tensor(B, 3, S, S),                         # only when weak_view=True
     "label":  Tensor(B,) int64}                           # for monitoring only

Validation (``val_dataloader``) returns two loaders of ``(Tensor(B, 3, S, S), Tensor(B,))``
with the deterministic eval view: index 0 is the *train* split (the kNN memory bank),
index 1 the *val* split (the kNN queries). Lightning passes that index to
``validation_step`` as ``dataloader_idx``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from ..errors import ConfigError, whole_number
from . import views as _views
from .datasets import DatasetSplits, _positive_int, build_datasets
from .device_views import DeviceViews
from .samplers import EvalSampler, TrainSampler


class MultiViewDataset(Dataset):
    """Turns each ``(image, label)`` of a base dataset into several augmented views.

    The weak view is produced only when a weak transform is given: it is ReCo's extra
    target view, and methods without ReCo should not pay for a third augmentation.
    """

    def __init__(
        self,
        base: Dataset,
        strong_transform: Callable[[Any], torch.Tensor],
        weak_transform: Callable[[Any], torch.Tensor] | None = None,
        num_strong: int = 2,
    ) -> None:
        if num_strong < 1:
            raise ValueError("num_strong must be at least 1")
        self.base = base
        self.strong_transform = strong_transform
        self.weak_transform = weak_transform
        self.num_strong = num_strong

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Any]:
        """``(index, seed)`` (from :class:`~reco_lightning.data.samplers.TrainSampler`) draws the
        views from ``seed``, leaving the global RNG untouched, so they do not depend on worker
        count, prefetching or where a resumed run restarted; ``index`` alone uses the global RNG."""
        if isinstance(index, tuple):
            index, seed = index
            with torch.random.fork_rng(devices=[]):
                # the CPU generator only: torch.manual_seed would also seed every CUDA
                # device, which costs 10x more than the views of a small image
                torch.default_generator.manual_seed(seed)
                return self._views(index)
        return self._views(index)

    def _views(self, index: int) -> dict[str, Any]:
        image, label = self.base[index]
        item: dict[str, Any] = {
            "strong": [self.strong_transform(image) for _ in range(self.num_strong)],
            "label": int(label),
        }
        if self.weak_transform is not None:
            item["weak"] = self.weak_transform(image)
        return item


class InMemoryImages(Dataset):
    """A base dataset decoded once, resized and centre-cropped into a uint8 ``(N, 3, S, S)``
    tensor for views drawn on the device (``augment_on=device``)."""

    MAX_BYTES = 8 * 1024**3  # refuse to hold more than this in memory

    def __init__(self, base: Dataset, image_size: int) -> None:
        count = len(base)  # type: ignore[arg-type]
        needed = count * 3 * image_size * image_size
        if needed > self.MAX_BYTES:
            raise ConfigError(
                f"dataset.augment_on=device keeps the {count} training images in memory at "
                f"{image_size} px ({needed / 1024**3:.1f} GiB, more than "
                f"{self.MAX_BYTES / 1024**3:.0f}): "
                "use it for CIFAR-size data, or set dataset.augment_on=cpu"
            )
        decode = v2.Compose(
            [
                v2.ToImage(),
                v2.RGB(),
                v2.Resize(image_size, antialias=True),
                v2.CenterCrop(image_size),
            ]
        )
        self.images = torch.empty(count, 3, image_size, image_size, dtype=torch.uint8)
        labels = []
        for index in range(count):
            image, label = base[index]
            self.images[index] = decode(image).as_subclass(torch.Tensor)
            labels.append(int(label))
        self.labels = torch.tensor(labels, dtype=torch.long)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Any]:
        seed = 0
        if isinstance(index, tuple):
            index, seed = index  # views are drawn later, on the device, seeded by the batch
        return {"images": self.images[index], "label": self.labels[index], "seed": seed}


class MaterialisedDataset(Dataset):
    """The items of a deterministic dataset (eval views, seeded alignment views), made once:
    remaking them every epoch costs as much as their forward passes (docs/benchmarks.md)."""

    def __init__(self, base: Dataset, indices: Sequence[Any]) -> None:
        self.items = [base[index] for index in indices]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.items[index]


class LabelledDataset(Dataset):
    """A base dataset seen through one deterministic transform: ``(tensor, label)`` items."""

    def __init__(self, base: Dataset, transform: Callable[[Any], torch.Tensor]) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[index]
        return self.transform(image), int(label)


#: deterministic evaluation views that fit in this many bytes are made once and kept
EVAL_CACHE_BYTES = 64 * 1024**2


class PositionedDataLoader(DataLoader):
    """The training loader. Its own state is empty (the data module's ``state_dict`` holds the
    position), but having the ``state_dict``/``load_state_dict`` pair stops Lightning from
    warning after every mid-epoch resume that the results may be unreliable."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass  # the data module's state_dict holds the position


class SSLDataModule(L.LightningDataModule):
    """Self-supervised data: two strong views (+ optional weak view) and kNN eval loaders.

    The splits are built eagerly in ``__init__`` because the model needs ``num_classes``,
    ``image_size`` and ``train_size`` before ``trainer.fit`` runs ``setup``; so
    ``download=True`` downloads from every process (download once before multi-GPU runs).
    ``batch_size`` is **per device**. The loaders shard the data across ranks themselves
    (:mod:`reco_lightning.data.samplers`; build the Trainer with ``use_distributed_sampler=False``)
    and ``state_dict`` records how far the epoch got, so a mid-epoch resume continues exactly.
    """

    def __init__(
        self,
        name: str = "digits",
        root: str | None = None,
        image_size: int | None = None,
        download: bool = False,
        batch_size: int = 128,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        weak_view: bool = False,
        val_fraction: float = 0.2,
        seed: int = 0,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        eval_batch_size: int | None = None,
        horizontal_flip: bool = True,
        augment_on: str = "cpu",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.batch_size = _positive_int(
            batch_size,
            "dataset.batch_size",
            "set dataset.batch_size to the per-device batch, e.g. 128",
        )
        eval_hint = (
            "set dataset.eval_batch_size to a positive number or null to reuse dataset.batch_size"
        )
        self.eval_batch_size = self.batch_size
        if eval_batch_size is not None:
            self.eval_batch_size = _positive_int(
                eval_batch_size, "dataset.eval_batch_size", eval_hint
            )
        self.num_workers = whole_number(
            "dataset.num_workers",
            num_workers,
            0,
            "0 loads in the main process, N > 0 in N worker processes",
        )
        self.pin_memory = bool(pin_memory) and torch.cuda.is_available()  # pinning needs a GPU
        self.persistent_workers = bool(persistent_workers) and num_workers > 0
        self.use_weak_view = bool(weak_view)
        self.crop_scale = tuple(crop_scale)

        self.splits: DatasetSplits = build_datasets(
            name, root, image_size, download, val_fraction=val_fraction, seed=seed
        )
        self.name = self.splits.name
        self.num_classes = self.splits.num_classes
        # the side length the views produce; for imagefolder with image_size=None it is the
        # inferred one, which the run should record in config.yaml (dataset.image_size)
        self.image_size: int = self.splits.image_size
        self.mean = self.splits.mean
        self.std = self.splits.std
        self.train_size = len(self.splits.train)  # type: ignore[arg-type]
        self.val_size = len(self.splits.val)  # type: ignore[arg-type]
        if self.batch_size > self.train_size:
            raise ConfigError(
                f"dataset.batch_size={self.batch_size} is larger than the {self.train_size} "
                f"training images of '{self.name}': lower dataset.batch_size"
            )

        # Built now (not per loader call) so they fail early on bad settings.
        view_args = (self.image_size, self.mean, self.std, self.crop_scale, bool(horizontal_flip))
        self.strong_transform = _views.strong_view(*view_args)
        self.weak_transform = _views.weak_view(*view_args) if self.use_weak_view else None
        self.eval_transform = _views.eval_view(self.image_size, self.mean, self.std)

        self._resume_point: tuple[int, int] | None = None
        if augment_on not in ("cpu", "device"):
            raise ConfigError(
                f"dataset.augment_on={augment_on!r} is not known: use cpu (per-image views in the "
                "loader) or device (whole batches on the training device)"
            )
        self.augment_on = augment_on
        self.device_views = DeviceViews(*view_args) if augment_on == "device" else None
        self._in_memory: InMemoryImages | None = None
        self._eval_cache: dict[str, MaterialisedDataset] = {}

    def _fits_eval_cache(self, images: int) -> bool:
        """Whether ``images`` float views of this dataset fit in :data:`EVAL_CACHE_BYTES`."""
        return images * 3 * self.image_size * self.image_size * 4 <= EVAL_CACHE_BYTES

    # ------------------------------------------------------------------ loaders
    def _loader(
        self, dataset: Dataset, batch_size: int, sampler: Sampler, train: bool
    ) -> DataLoader:
        return (PositionedDataLoader if train else DataLoader)(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=train,  # equal-sized batches keep contrastive losses / queues stable
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            # its own generator: creating an iterator must not consume the global RNG,
            # or a resumed run would draw different ReCo mixing ratios than the original
            generator=torch.Generator().manual_seed(int(self.hparams.seed)),
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """With ``augment_on=device``: turn a batch of uint8 images, already on the training
        device, into the strong (and weak) views, every image with its own draw."""
        if self.device_views is not None and isinstance(batch, dict) and "images" in batch:
            # the batch's draws follow from its images' seeds, not from the global RNG: a run
            # resumed mid-epoch then draws the same views as one that was never interrupted
            seed = int(batch["seed"][0]) if "seed" in batch else None
            views = self.device_views.to(batch["images"].device)(
                batch["images"], weak=self.use_weak_view, seed=seed
            )
            return {**views, "label": batch["label"]}
        return batch

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """Where training stands in the current epoch (saved in every checkpoint)."""
        trainer = self.trainer
        if trainer is None:
            return {}
        epoch = int(trainer.current_epoch)
        batches_done = int(trainer.fit_loop.epoch_loop.batch_progress.current.completed)
        epoch_length = trainer.num_training_batches  # limit_train_batches included
        if batches_done > 0 and batches_done >= epoch_length:  # saved as the epoch ended
            epoch, batches_done = epoch + 1, 0
        return {"epoch": epoch, "batches_done": batches_done}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Remember where to restart; applied when the train loader is next built."""
        if "epoch" in state_dict:
            self._resume_point = (int(state_dict["epoch"]), int(state_dict["batches_done"]))

    def _check_per_device_size(self) -> None:
        """Under DDP each rank sees 1/N of the data; drop_last would leave it no batch."""
        trainer = self.trainer  # set by Lightning when fitting; None when used standalone
        world = int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1
        per_rank = self.train_size // world
        if self.batch_size > per_rank:
            raise ConfigError(
                f"dataset.batch_size={self.batch_size} is larger than the {per_rank} training "
                f"images each of the {world} devices sees of '{self.name}': lower "
                "dataset.batch_size (it is per device)"
            )

    def train_dataloader(self) -> DataLoader:
        """Shuffled, drop-last loader of multi-view dicts (see the module docstring)."""
        self._check_per_device_size()
        dataset: Dataset
        if self.augment_on == "device":
            if self._in_memory is None:
                self._in_memory = InMemoryImages(self.splits.train, self.image_size)
            dataset = self._in_memory
        else:
            dataset = MultiViewDataset(
                self.splits.train, self.strong_transform, self.weak_transform
            )
        sampler = TrainSampler(self.train_size, self.batch_size, seed=int(self.hparams.seed))
        if self._resume_point is not None:
            epoch, batches_done = self._resume_point
            self._resume_point = None
            if batches_done >= sampler.batches_per_epoch():  # saved at the end of an epoch
                epoch, batches_done = epoch + 1, 0
            sampler.resume_at(epoch, batches_done)
        return self._loader(dataset, self.batch_size, sampler, train=True)

    def alignment_loader(self, num_images: int = 512) -> DataLoader:
        """Two strong views of the first ``num_images`` validation images, for the alignment
        diagnostic: the same views on every call (each image has a fixed seed), made once
        and kept when they fit in :data:`EVAL_CACHE_BYTES`."""
        count = min(num_images, self.val_size)
        dataset: Dataset = MultiViewDataset(self.splits.val, self.strong_transform)
        fixed = [(index, 1_000_000_007 + index) for index in range(count)]
        if not self._fits_eval_cache(2 * count):
            return DataLoader(
                dataset, batch_size=self.eval_batch_size, sampler=fixed, num_workers=0
            )
        key = f"alignment-{count}"
        if key not in self._eval_cache:
            self._eval_cache[key] = MaterialisedDataset(dataset, fixed)
        return DataLoader(
            self._eval_cache[key], batch_size=self.eval_batch_size, shuffle=False, num_workers=0
        )

    def _eval_dataset(self, name: str, split: Dataset) -> Dataset:
        """``split`` through the eval view; made once and kept when it fits the cache."""
        dataset: Dataset = LabelledDataset(split, self.eval_transform)
        if not self._fits_eval_cache(len(dataset)):  # type: ignore[arg-type]
            return dataset
        if name not in self._eval_cache:
            self._eval_cache[name] = MaterialisedDataset(dataset, range(len(dataset)))  # type: ignore[arg-type]
        return self._eval_cache[name]

    def val_dataloader(self) -> list[DataLoader]:
        """``[train split (kNN memory bank), val split (kNN queries)]``, both eval view."""
        return [
            self._loader(
                self._eval_dataset(name, split),
                self.eval_batch_size,
                EvalSampler(len(split)),
                train=False,
            )
            for name, split in (("train", self.splits.train), ("val", self.splits.val))
        ]


__all__ = ["LabelledDataset", "MultiViewDataset", "SSLDataModule"]
