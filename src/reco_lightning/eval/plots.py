"""Pictures of a run: a 2-D map of the features coloured by class, and training curves.

Written as PNG into the run directory at the end of training and by the eval command.
The map uses t-SNE from scikit-learn (UMAP when ``umap-learn`` is installed and asked
for); it is computed on at most ``max_points`` samples, drawn evenly at random, because
t-SNE's cost grows quadratically.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def embed_2d(features: Tensor, method: str = "tsne", seed: int = 0) -> Tensor:
    """2-D coordinates of L2-normalised ``features`` by t-SNE (default) or UMAP."""
    points = F.normalize(features.float(), dim=1).cpu().numpy()
    if method == "umap":
        try:
            import umap  # type: ignore[import-not-found]
        except ModuleNotFoundError:
            method = "tsne"
        else:
            return torch.from_numpy(
                umap.UMAP(random_state=seed, metric="cosine").fit_transform(points)
            )
    if method != "tsne":
        raise ConfigError(f"map.method={method!r} is not known: use tsne or umap")
    from sklearn.manifold import TSNE

    perplexity = float(min(30, max(5, (points.shape[0] - 1) // 4)))
    coordinates = TSNE(
        n_components=2, init="pca", perplexity=perplexity, random_state=seed
    ).fit_transform(points)
    return torch.from_numpy(coordinates)


def feature_map(
    features: Tensor,
    labels: Tensor,
    path: Path,
    title: str,
    method: str = "tsne",
    max_points: int = 2000,
    class_names: list[str] | None = None,
    seed: int = 0,
) -> Path:
    """Scatter plot of a 2-D embedding of ``features`` coloured by ``labels``."""
    if features.shape[0] > max_points:
        keep = torch.randperm(features.shape[0], generator=torch.Generator().manual_seed(seed))[
            :max_points
        ]
        features, labels = features[keep.to(features.device)], labels[keep.to(labels.device)]
    coordinates = embed_2d(features, method, seed)
    labels = labels.cpu()
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(5.6, 5.0), dpi=110)
    classes = sorted(int(c) for c in labels.unique())
    colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for i, cls in enumerate(classes):
        rows = labels == cls
        name = class_names[cls] if class_names and cls < len(class_names) else str(cls)
        axes.scatter(
            coordinates[rows, 0],
            coordinates[rows, 1],
            s=4,
            color=colours(i % colours.N),
            label=name,
        )
    axes.set(xticks=[], yticks=[])
    axes.set_title(title, fontsize=9)
    if len(classes) <= 20:
        axes.legend(markerscale=3, fontsize=6, loc="best", frameon=False, ncol=2)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def read_epoch_curves(metrics_csv: Path) -> dict[str, list[tuple[int, float]]]:
    """Per-epoch values from Lightning's ``metrics.csv``: ``{key: [(epochs_trained, value)]}``.

    Epoch-level values are logged at the end of an epoch, so epoch ``e`` is drawn at
    ``e + 1`` epochs trained; the validation run before training (random initialisation)
    comes before any training row and is drawn at 0.
    """
    curves: dict[str, list[tuple[int, float]]] = defaultdict(list)
    trained = False
    with open(metrics_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            epoch = row.get("epoch")
            if epoch in (None, ""):
                continue
            trained = trained or any(
                k.startswith("train/") and v not in (None, "") for k, v in row.items()
            )
            x = int(float(epoch)) + 1 if trained else 0
            for key, value in row.items():
                if value in (None, "") or key in ("epoch", "step"):
                    continue
                if key.endswith("_epoch") or key.startswith("val/"):
                    curves[key.removesuffix("_epoch")].append((x, float(value)))
    return dict(curves)


def training_curves(metrics_csv: Path, path: Path, title: str) -> Path:
    """Losses (total and each term) and kNN accuracy per epoch, side by side."""
    curves = read_epoch_curves(metrics_csv)
    plt = _pyplot()
    figure, (losses, accuracy) = plt.subplots(1, 2, figsize=(9.0, 3.4), dpi=110)
    from matplotlib.ticker import MaxNLocator

    panels = (  # axes, curves, scale, x and y labels
        (
            losses,
            ("train/loss", "train/loss_method", "train/loss_global", "train/loss_local"),
            1,
            "epochs trained",
            "loss",
        ),
        (
            accuracy,
            ("val/knn_acc", "val/linear_acc"),
            100,
            "epochs trained (0 = random initialisation)",
            "accuracy (%)",
        ),
    )
    for axes, keys, scale, xlabel, ylabel in panels:
        for key in keys:
            if key in curves:
                epochs, values = zip(*curves[key])
                axes.plot(
                    epochs,
                    [scale * v for v in values],
                    marker="o",
                    markersize=2,
                    label=key.split("/", 1)[1],
                )
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        axes.legend(fontsize=7)
        axes.grid(alpha=0.3)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


__all__ = ["embed_2d", "feature_map", "read_epoch_curves", "training_curves"]
