"""Offline evaluation of a checkpoint: what ``python -m reco_lightning.eval`` runs.

The backbone runs once over the training split (the kNN bank and the linear classifier's
training set) and the validation split, with the deterministic evaluation view; kNN, linear
evaluation, relation diagnostics and pictures then use those features.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ..data import SSLDataModule
from ..errors import ConfigError
from ..eval.features import extract_features
from ..eval.linear import LinearProtocol, linear_evaluation, topk_accuracy
from ..eval.plots import feature_map, training_curves
from ..metrics.diagnostics import relation_diagnostics, view_pair_features
from ..metrics.knn import weighted_knn_scores
from ..models import build_backbone
from .checkpoints import checkpoint_file, read_checkpoint
from .config_checks import as_dict

#: the kNN settings of ``conf/config.yaml``, for a run whose own are unknown
DEFAULT_KNN = {"k": 200, "temperature": 0.1}


def resolve_checkpoint(value: Any) -> Path:
    """The ``.ckpt`` file that ``checkpoint=`` names (a file, or a run directory's last.ckpt)."""
    if value is None or str(value).strip() in {"", "???"}:
        raise ConfigError(
            "checkpoint is not set: pass the checkpoint to evaluate, e.g. "
            "python -m reco_lightning.eval checkpoint=outputs/DATE/TIME (a run directory: its "
            "checkpoints/last.ckpt) or checkpoint=RUN/checkpoints/best-....ckpt"
        )
    return checkpoint_file(
        value, "checkpoint", " or a run directory that holds checkpoints/last.ckpt"
    )


def run_directory(checkpoint: Path) -> Path:
    """The run a checkpoint belongs to: ``RUN/checkpoints/x.ckpt`` -> ``RUN``."""
    return (
        checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    )


def load_backbone(checkpoint: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The trained backbone of a reco_lightning checkpoint, and the run's hyperparameters."""
    state = read_checkpoint(checkpoint)  # a one-line ConfigError for truncated or foreign files
    return backbone_from_state(state, checkpoint), state["hyper_parameters"]


def backbone_from_state(state: dict[str, Any], checkpoint: Path) -> torch.nn.Module:
    """The trained backbone (in eval mode) held by ``state``, a checkpoint's contents that
    :func:`~reco_lightning.run.checkpoints.read_checkpoint` read from ``checkpoint``: the
    ``backbone.*`` weights, without that prefix, in a freshly built backbone."""
    hparams = state["hyper_parameters"]
    if "backbone" not in hparams:
        raise ConfigError(f"checkpoint={checkpoint} is not a reco_lightning training checkpoint")
    backbone, _ = build_backbone(
        hparams["backbone"], hparams["backbone_width"], hparams["small_stem"]
    )
    weights = {
        k.removeprefix("backbone."): v
        for k, v in state["state_dict"].items()
        if k.startswith("backbone.")
    }
    try:
        backbone.load_state_dict(weights)
    except RuntimeError as error:  # missing, unexpected or misshapen keys: not this run's weights
        raise ConfigError(
            f"checkpoint={checkpoint}: its backbone.* weights do not fit the {hparams['backbone']} "
            "of width "
            f"{hparams['backbone_width']} its hyperparameters describe "
            f"({str(error).splitlines()[0][:160]})"
        ) from None
    return backbone.eval()


def _run_config(run_dir: Path) -> DictConfig | None:
    """The run's resolved ``config.yaml`` (written by training), or None when absent."""
    path = run_dir / "config.yaml"
    return OmegaConf.load(path) if path.is_file() else None  # type: ignore[return-value]


def knn_settings(
    cfg: DictConfig, run_config: DictConfig | None, hparams: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """``knn.k`` and ``knn.temperature`` for the evaluation, and where each came from.

    The command line wins; otherwise the run's own value, so that ``eval`` reproduces the
    kNN accuracy of the run's ``summary.json`` (a dataset preset may change it: digits uses
    k=20); the run's ``config.yaml`` first, then the checkpoint's hyperparameters
    (``knn_k``), and :data:`DEFAULT_KNN` when neither knows it.
    """
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    given = cfg.get("knn") or {}
    run_knn = (run_config or {}).get("knn") or {}
    for key, cast in (("k", int), ("temperature", float)):
        candidates = (
            (given.get(key), "the command line"),
            (run_knn.get(key), "the run's config.yaml"),
            (hparams.get(f"knn_{key}"), "the checkpoint's hyperparameters"),
            (DEFAULT_KNN[key], "the default"),
        )
        value, sources[key] = next((v, source) for v, source in candidates if v is not None)
        try:
            values[key] = cast(value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"knn.{key}={value!r} (from {sources[key]}) is not a number: set knn.{key}"
            ) from None
        if values[key] <= 0:
            raise ConfigError(
                f"knn.{key}={values[key]} (from {sources[key]}) must be positive: set knn.{key}"
            )
    return values, sources


def _dataset_settings(
    cfg: DictConfig, run_dir: Path, run_config: DictConfig | None
) -> tuple[dict[str, Any], int]:
    """The dataset settings and the seed of its train/val split (the run's, when known)."""
    seed = (
        int(run_config.seed) if run_config is not None and "seed" in run_config else int(cfg.seed)
    )
    if cfg.get("dataset") is not None:
        return as_dict(cfg.dataset, "dataset"), seed
    if run_config is None:
        raise ConfigError(
            f"no config.yaml in {run_dir} to take the dataset from: choose one, e.g. "
            "dataset=imagefolder dataset.root=/path/to/images"
        )
    return as_dict(run_config.dataset, "dataset"), seed


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device={name}: this machine has no CUDA GPU; use device=cpu (or device=auto)"
        )
    return device


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.checkpoint``; returns (and writes) the contents of ``eval.json``."""
    checkpoint = resolve_checkpoint(
        cfg.checkpoint if not OmegaConf.is_missing(cfg, "checkpoint") else None
    )
    run_dir = run_directory(checkpoint)
    output_dir = Path(cfg.output_dir) if cfg.get("output_dir") else run_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    backbone, hparams = load_backbone(checkpoint)
    run_config = _run_config(run_dir)
    knn, knn_sources = knn_settings(cfg, run_config, hparams)
    settings, split_seed = _dataset_settings(cfg, run_dir, run_config)
    settings.pop("queue_size", None)
    # Evaluation trains nothing, so the training batch and its check (a batch must fit in the
    # training split) do not apply: a small folder can be evaluated. The loaders here use
    # the evaluation batch, which defaults to the training one.
    if settings.get("eval_batch_size") is None and settings.get("batch_size") is not None:
        settings["eval_batch_size"] = settings["batch_size"]
    settings["batch_size"] = 1
    datamodule = SSLDataModule(**settings, seed=split_seed)
    device = _device(cfg.device)
    bank_loader, val_loader = datamodule.val_dataloader()
    train_x, train_y = extract_features(
        backbone, bank_loader, device, "features (train)", cfg.progress
    )
    val_x, val_y = extract_features(backbone, val_loader, device, "features (val)", cfg.progress)
    classes = datamodule.num_classes
    root = settings.get("root")
    dataset_label = f"{datamodule.name} ({Path(str(root)).name})" if root else datamodule.name

    scores = weighted_knn_scores(train_x, train_y, val_x, classes, knn["k"], knn["temperature"])
    result: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "dataset": dataset_label,
        "num_train": int(train_y.shape[0]),
        "num_val": int(val_y.shape[0]),
        "knn": {
            **knn,
            "settings_from": knn_sources,  # settings_from: e.g. {"k": "the command line", ...}
            "top1": topk_accuracy(scores, val_y, 1),
            "top5": topk_accuracy(scores, val_y, 5),
        },
    }
    if cfg.linear.enabled:
        protocol = LinearProtocol(
            **{k: v for k, v in as_dict(cfg.linear, "linear").items() if k != "enabled"},
            seed=int(cfg.seed),
        )
        result["linear"] = linear_evaluation(
            train_x, train_y, val_x, val_y, classes, protocol, cfg.progress
        )

    view1 = view2 = None
    if int(cfg.diagnostics.alignment_images) > 0:
        loader = datamodule.alignment_loader(int(cfg.diagnostics.alignment_images))
        view1, view2 = view_pair_features(backbone, loader, device)
    result["diagnostics"] = relation_diagnostics(val_x, val_y, view1, view2)
    if cfg.map.enabled:
        if cfg.progress:
            print(
                f"computing the {cfg.map.method} map of {min(len(val_y), cfg.map.max_points)} "
                "points ...",
                flush=True,
            )
        path = feature_map(
            val_x,
            val_y,
            output_dir / "eval_feature_map.png",
            title=f"{'ReCo on' if hparams.get('reco') else 'ReCo off'} | {checkpoint.name} | "
            f"{dataset_label} val",
            method=cfg.map.method,
            max_points=int(cfg.map.max_points),
            seed=int(cfg.seed),
            class_names=getattr(datamodule.splits.val, "classes", None),
        )
        result["feature_map"] = str(path)
    metrics = run_dir / "metrics.csv"
    if metrics.is_file():  # the run's training curves, beside its evaluation
        result["training_curves"] = str(
            training_curves(
                metrics,
                output_dir / "training_curves.png",
                f"{checkpoint.parent.parent.name}: training",
            )
        )
    result["eval_time_s"] = round(time.time() - started, 1)
    (output_dir / "eval.json").write_text(json.dumps(result, indent=2))
    print(format_table(result))
    print(f"wrote {output_dir / 'eval.json'}")
    return result


def format_table(result: dict[str, Any]) -> str:
    """The evaluation as an aligned text table."""

    def pct(value: float) -> str:
        return f"{100 * value:6.2f}%"

    def scores(label: str, record: dict[str, Any]) -> str:
        return f"{label:<28}top-1 {pct(record['top1'])}   top-5 {pct(record['top5'])}"

    knn, d = result["knn"], result["diagnostics"]
    lines = [
        "",
        f"== reco_lightning.eval: {result['checkpoint']}",
        f"   {result['dataset']}: {result['num_train']} training images (kNN bank, linear "
        "training), "
        f"{result['num_val']} evaluated",
        scores("kNN (k=%d, T=%g)" % (knn["k"], knn["temperature"]), knn),
    ]
    if "settings_from" in knn:
        lines.append(
            "   kNN k from {k}, temperature from {temperature}".format(**knn["settings_from"])
        )
    if "linear" in result:
        lines.append(
            scores("linear (%d epochs)" % result["linear"]["protocol"]["epochs"], result["linear"])
        )
    lines += [
        f"neighbour purity @10 / @50  {pct(d['purity@10'])} / {pct(d['purity@50'])}",
        f"cosine same / diff class    {d['cos_same_class']:.3f} / {d['cos_diff_class']:.3f}   gap "
        f"{d['cos_gap']:.3f}",
        f"uniformity                  {d['uniformity']:.3f}",
    ]
    if "alignment" in d:
        lines.append(f"alignment                   {d['alignment']:.3f}")
    return "\n".join(lines)


__all__ = [
    "DEFAULT_KNN",
    "backbone_from_state",
    "evaluate",
    "format_table",
    "knn_settings",
    "load_backbone",
    "resolve_checkpoint",
]
