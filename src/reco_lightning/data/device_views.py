"""Views built for a whole batch at once, on the training device (``dataset.augment_on=device``).

Per-image PIL augmentation in worker processes is the usual bottleneck of self-supervised
training on small images: each image needs two strong views (three with ReCo's weak view),
and a GPU consumes CIFAR-size batches faster than a few CPU workers can draw them. Here the
decoded dataset stays in memory as uint8 tensors, the loader only gathers rows, and the
views are drawn for the whole batch on the device the batch is on, after the transfer.

The pipeline is kornia's (the standard library of batched, differentiable augmentation on
tensors), with the parameters of :mod:`reco_lightning.data.views`: random resized crop,
colour jitter (p=0.8), grayscale (p=0.2), Gaussian blur (p=0.5, images of 64 px or more)
and horizontal flip for the strong views; crop and flip for the weak view. Every image gets
its own random draw (``same_on_batch=False``). One difference from the per-image pipeline:
kornia applies the four colour-jitter operations in one random order per batch, where
torchvision draws an order per image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .views import BLUR_MIN_SIZE, blur_kernel_size


class DeviceViews(nn.Module):
    """Strong and weak views of a uint8 image batch ``(B, 3, H, W)``, drawn per image."""

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        crop_scale: tuple[float, float] = (0.2, 1.0),
        horizontal_flip: bool = True,
    ) -> None:
        super().__init__()
        import kornia.augmentation as K

        size = (image_size, image_size)
        crop = dict(scale=tuple(crop_scale), ratio=(3 / 4, 4 / 3), same_on_batch=False)
        strong: list[nn.Module] = [
            K.RandomResizedCrop(size, **crop),
            K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8),
            K.RandomGrayscale(p=0.2),
        ]
        if image_size >= BLUR_MIN_SIZE:
            strong.append(
                K.RandomGaussianBlur(blur_kernel_size(image_size), sigma=(0.1, 2.0), p=0.5)
            )
        weak: list[nn.Module] = [K.RandomResizedCrop(size, **crop)]
        if horizontal_flip:
            strong.append(K.RandomHorizontalFlip())
            weak.append(K.RandomHorizontalFlip())
        self.strong = nn.Sequential(*strong)
        self.weak = nn.Sequential(*weak)
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )

    def _normalise(self, images: Tensor) -> Tensor:
        return (images - self.mean.to(images.device)) / self.std.to(images.device)

    @torch.no_grad()
    def forward(
        self, images: Tensor, num_strong: int = 2, weak: bool = False, seed: int | None = None
    ) -> dict[str, Tensor | list[Tensor]]:
        """``{"strong": [view, ...], "weak": view?}`` as float32, normalised.

        With ``seed`` the draws come from generators seeded with it, and the global random
        state is left as it was: the views of a batch depend only on the batch (the
        training sampler gives each image a seed), as the per-image views of
        ``augment_on=cpu`` do. Without it they come from the global random state.
        """
        if images.dtype != torch.uint8:
            raise TypeError(f"DeviceViews takes uint8 images, not {images.dtype}")
        if seed is None:
            return self._views(images, num_strong, weak)
        devices = [images.device] if images.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            return self._views(images, num_strong, weak)

    def _views(
        self, images: Tensor, num_strong: int, weak: bool
    ) -> dict[str, Tensor | list[Tensor]]:
        pixels = images.float().div_(255)
        views: dict[str, Tensor | list[Tensor]] = {
            "strong": [self._normalise(self.strong(pixels)) for _ in range(num_strong)]
        }
        if weak:
            views["weak"] = self._normalise(self.weak(pixels))
        return views


__all__ = ["DeviceViews"]
