"""``python -m reco_lightning.export checkpoint=PATH format=...``: the trained backbone out
of the training wrapper (the checkpoint's ``backbone.*`` weights, prefix stripped) in a file
that loads without this package, with ``backbone.json`` beside it. Formats, the description
and how each loads: README.md, "Export the backbone".

>>> from reco_lightning.export import export_backbone
>>> info = export_backbone("outputs/DATE/TIME", "torchvision")  # doctest: +SKIP
>>> info["load"]  # doctest: +SKIP
'import torch, torchvision; m = torchvision.models.resnet18(); m.fc = torch.nn.Identity(); ...'
"""

from __future__ import annotations

import difflib
import json
import os
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from .data import datasets as d
from .errors import ConfigError, RecoLightningError, one_line
from .models.backbones import RESNET_LAYOUTS, TIMM_PREFIX, timm_backbone
from .run.checkpoints import checkpoint_has_reco, checkpoint_method, read_checkpoint
from .run.cli_checks import check_or_exit
from .run.evaluate import backbone_from_state, resolve_checkpoint, run_directory

#: the file extension of each format
FORMATS: dict[str, str] = {
    "torchvision": ".pth",
    "timm": ".pth",
    "safetensors": ".safetensors",
    "torchscript": ".pt",
}
#: the file name (without extension) that export writes into a folder
STEM = "backbone"

_SMALL_STEM = "small 3x3, no max-pool"
_TORCHVISION_STEM = "torchvision"


def check_format(name: Any) -> str:
    """``name`` if it is a format export writes, else a one-line :class:`ConfigError`.

    >>> check_format("safetensors")
    'safetensors'
    """
    text = str(name).strip()
    if text in FORMATS:
        return text
    close = difflib.get_close_matches(text.lower(), list(FORMATS), n=1)
    hint = f"did you mean format={close[0]}? " if close else ""
    raise ConfigError(
        f"format={name} is not a format export writes: {hint}choose one of {', '.join(FORMATS)}"
    )


def backbone_weights(
    state: Mapping[str, Any], checkpoint: Path | str = "the checkpoint"
) -> dict[str, torch.Tensor]:
    """The backbone's tensors of a checkpoint's contents: its ``backbone.*`` entries, with
    the prefix stripped (the names of torchvision's ResNet).

    >>> weights = {"backbone.conv1.weight": torch.ones(1), "projector.0.weight": torch.ones(1)}
    >>> backbone_weights({"state_dict": weights})
    {'conv1.weight': tensor([1.])}
    """
    weights = {
        k.removeprefix("backbone."): v
        for k, v in state["state_dict"].items()
        if k.startswith("backbone.")
    }
    if not weights:
        raise ConfigError(
            f"checkpoint {checkpoint} holds no backbone.* weights: it is not a reco_lightning "
            "training checkpoint"
        )
    return weights


def describe_architecture(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """Name, stem, width and feature dimension of the backbone that ``hparams`` (a training
    checkpoint's hyperparameters) describe, and whether plain torchvision builds it.

    >>> hparams = {"backbone": "resnet18", "backbone_width": 64, "small_stem": False}
    >>> describe_architecture(hparams)["plain_torchvision"]
    True
    """
    name = str(hparams.get("backbone", "resnet18"))
    if name.startswith(TIMM_PREFIX):
        _, feature_dim = timm_backbone(name.removeprefix(TIMM_PREFIX))
        return {
            "architecture": name,
            "stem": "timm",
            "width": None,
            "feature_dim": feature_dim,
            "plain_torchvision": False,
            "timm": True,
        }
    if name not in RESNET_LAYOUTS:
        raise ConfigError(
            f"backbone {name!r} of this checkpoint is not one export knows: "
            f"{sorted(RESNET_LAYOUTS)}"
        )
    width = int(hparams.get("backbone_width", 64))
    small = bool(hparams.get("small_stem", False))
    block, _ = RESNET_LAYOUTS[name]
    feature_dim = width * 8 * block.expansion  # type: ignore[attr-defined]
    return {
        "architecture": name,
        "stem": _SMALL_STEM if small else _TORCHVISION_STEM,
        "width": width,
        "feature_dim": feature_dim,
        "plain_torchvision": width == 64,
    }


def build_line(arch: Mapping[str, Any]) -> str:
    """Python (one line) that builds an empty backbone ``m`` the exported weights load into
    strictly: plain torchvision at width 64, else :func:`reco_lightning.models.build_backbone`.

    >>> arch = {"architecture": "resnet18", "width": 64, "stem": "torchvision"}
    >>> build_line({**arch, "plain_torchvision": True})
    'import torch, torchvision; m = torchvision.models.resnet18(); m.fc = torch.nn.Identity()'
    """
    name, width, small = arch["architecture"], arch["width"], arch["stem"] == _SMALL_STEM
    if arch.get("timm"):
        model = name.removeprefix("timm/")
        return f'import timm, torch; m = timm.create_model("{model}", num_classes=0)'
    if not arch["plain_torchvision"]:
        return (
            f"import torch; from reco_lightning.models import build_backbone; "
            f'm, _ = build_backbone("{name}", {width}, small_stem={small})'
        )
    line = f"import torch, torchvision; m = torchvision.models.{name}()"
    if small:
        line += "; m.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)"
        line += "; m.maxpool = torch.nn.Identity()"
    return line + "; m.fc = torch.nn.Identity()"


def load_line(fmt: str, arch: Mapping[str, Any], filename: str) -> str:
    """The one line of Python that loads the exported file ``filename`` as the model ``m``.

    >>> load_line("torchscript", {}, "backbone.pt")
    'import torch; m = torch.jit.load("backbone.pt").eval()'
    """
    if fmt == "torchscript":
        return f'import torch; m = torch.jit.load("{filename}").eval()'
    if fmt == "safetensors":
        return (
            f"{build_line(arch)}; from safetensors.torch import load_file; "
            f'm.load_state_dict(load_file("{filename}")); m.eval()'
        )
    return f'{build_line(arch)}; m.load_state_dict(torch.load("{filename}")); m.eval()'


def torchvision_note(arch: Mapping[str, Any]) -> str:
    """How (or whether) plain torchvision builds the backbone, in one sentence."""
    name, width, small = arch["architecture"], arch["width"], arch["stem"] == _SMALL_STEM
    if arch.get("timm"):
        return (
            f"not a torchvision model: timm builds it ({build_line(arch)}; "
            "the weights load with strict=True)"
        )
    if arch["plain_torchvision"] and arch["stem"] == _TORCHVISION_STEM:
        return (
            f"torchvision.models.{name}() with fc = torch.nn.Identity() "
            "(the weights load with strict=True)"
        )
    if arch["plain_torchvision"]:
        return (
            f"torchvision.models.{name}() with the small-image stem: conv1 = Conv2d(3, 64, 3, 1, "
            "1, "
            "bias=False), maxpool = Identity, fc = Identity (the weights then load with "
            "strict=True)"
        )
    return (
        f"no torchvision constructor builds width {width} (stages {width}-{width * 8}; "
        "torchvision's "
        f"ResNets are 64-512, and width_per_group is not this width): load into "
        f"reco_lightning.models.build_backbone({name!r}, {width}, small_stem={small}), "
        "or export with format=torchscript for users without reco_lightning"
    )


def normalisation(dataset: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Per-channel ``mean`` and ``std`` the run normalised its images with (inputs are
    ``(pixels / 255 - mean) / std``), from its dataset settings; None when unknown. Those
    of ``digits`` depend on the run's training split, so they are recomputed.

    >>> normalisation({"name": "cifar10"})["mean"]
    [0.4914, 0.4822, 0.4465]
    """
    if not dataset or not dataset.get("name"):
        return None
    name = str(dataset["name"]).strip().lower()
    fixed = {
        "cifar10": (d.CIFAR10_MEAN, d.CIFAR10_STD),
        "cifar100": (d.CIFAR100_MEAN, d.CIFAR100_STD),
        "stl10": (d.STL10_MEAN, d.STL10_STD),
        "imagefolder": (d.IMAGENET_MEAN, d.IMAGENET_STD),
    }
    if name in fixed:
        mean, std = fixed[name]
    elif name == "digits":
        splits = d.build_datasets(
            "digits",
            None,
            dataset.get("image_size"),
            False,
            val_fraction=float(dataset.get("val_fraction", 0.2)),
            seed=int(dataset.get("seed", 0)),
        )
        mean, std = splits.mean, splits.std
    else:
        return None
    return {"mean": [float(m) for m in mean], "std": [float(s) for s in std], "dataset": name}


def run_dataset(run_dir: Path, state: Mapping[str, Any]) -> dict[str, Any] | None:
    """The run's dataset settings and seed: its ``config.yaml`` (which also records an image
    size inferred from a folder), else the data module's hyperparameters in the checkpoint."""
    config = run_dir / "config.yaml"
    if config.is_file():
        cfg = OmegaConf.load(config)
        if isinstance(cfg, DictConfig) and cfg.get("dataset") is not None:
            dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
            assert isinstance(dataset, dict)
            dataset.setdefault("seed", cfg.get("seed", 0))
            return {str(k): v for k, v in dataset.items()}
    saved = state.get("datamodule_hyper_parameters")
    return dict(saved) if isinstance(saved, Mapping) else None


def epochs_trained(state: Mapping[str, Any]) -> int | None:
    """The training epochs the checkpoint's weights have completed (a checkpoint written at
    an epoch boundary or at the end counts every epoch before it; one written mid-epoch,
    on SIGTERM, leaves the epoch in progress out).

    >>> epochs_trained({"loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 3}}}}})
    3
    """
    try:
        return int(state["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"])
    except (KeyError, TypeError, ValueError):
        return None


def knn_record(
    run_dir: Path, checkpoint: Path, state: Mapping[str, Any]
) -> tuple[float | None, str | None]:
    """The kNN accuracy of these very weights, and where it came from.

    The run's ``summary.json`` when it describes this checkpoint (the same global step);
    else the score the checkpoint callback recorded for this file when it saved it (a
    ``best-*.ckpt``); else ``(None, None)``.
    """
    summary = run_dir / "summary.json"
    if summary.is_file():
        try:
            record = json.loads(summary.read_text())
        except (OSError, ValueError):
            record = {}
        if record.get("steps") == state.get("global_step") and record.get("knn_acc") is not None:
            return float(record["knn_acc"]), "summary.json"
    for key, value in (state.get("callbacks") or {}).items():
        if not isinstance(value, Mapping) or value.get("monitor") != "val/knn_acc":
            continue
        # RunCheckpoints records its best file; Lightning's ModelCheckpoint its top k
        scores = dict(value.get("best_k_models") or {})
        if value.get("best_path") is not None:
            scores[value["best_path"]] = value.get("best_score")
        for path, score in scores.items():
            if Path(str(path)).name == checkpoint.name and score is not None:
                return float(score), "the checkpoint (val/knn_acc when it was saved)"
    return None, None


def output_path(output: Any, run_dir: Path, fmt: str) -> Path:
    """Where the weights go: ``RUN/export/backbone.<ext>`` by default; ``output`` names a
    folder (``backbone.<ext>`` inside) or a file ending in the format's extension.

    >>> output_path(None, Path("RUN"), "safetensors").as_posix()
    'RUN/export/backbone.safetensors'
    """
    ext = FORMATS[fmt]
    if output is None or str(output).strip() == "":
        return run_dir / "export" / f"{STEM}{ext}"
    path = Path(str(output)).expanduser()
    if path.is_dir() or not path.suffix:
        return path / f"{STEM}{ext}"
    if path.suffix != ext:
        raise ConfigError(
            f"output={output}: format={fmt} writes a {ext} file; "
            f"name a folder or a file ending in {ext}"
        )
    return path


def _require_safetensors() -> Any:
    try:
        import safetensors.torch
    except ModuleNotFoundError:
        raise ConfigError(
            "format=safetensors needs the safetensors package: "
            'pip install "reco_lightning[export]" (or pip install safetensors)'
        ) from None
    return safetensors.torch


def _atomic_write(path: Path, write: Any) -> None:
    """``write(tmp)`` then rename over ``path``: a failure leaves no half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as error:
        raise ConfigError(
            f"could not write {path} ({error.strerror or error}): choose another output="
        ) from None
    finally:
        tmp.unlink(missing_ok=True)


def write_weights(
    backbone: torch.nn.Module,
    weights: dict[str, torch.Tensor],
    fmt: str,
    path: Path,
    image_size: int | None,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``weights`` or, for torchscript, a trace of ``backbone`` (on one ``image_size``
    image) to ``path``."""
    plain = {k: v.detach().clone().contiguous() for k, v in weights.items()}
    if fmt in ("torchvision", "timm"):
        _atomic_write(path, lambda tmp: torch.save(plain, tmp))
    elif fmt == "safetensors":
        save_file = _require_safetensors().save_file
        _atomic_write(path, lambda tmp: save_file(plain, str(tmp), metadata=dict(metadata or {})))
    else:
        if image_size is None:
            raise ConfigError("format=torchscript needs image_size to trace at")
        with warnings.catch_warnings(), torch.no_grad():
            # torch.jit is deprecated in favour of torch.export (FutureWarning), and still
            # what a user without this package loads with one call.
            warnings.simplefilter("ignore", FutureWarning)
            traced = torch.jit.trace(backbone.eval(), torch.zeros(1, 3, image_size, image_size))
            _atomic_write(path, lambda tmp: torch.jit.save(traced, str(tmp)))


def export_backbone(
    checkpoint: str | Path,
    fmt: str = "torchvision",
    output: str | Path | None = None,
    image_size: int | None = None,
) -> dict[str, Any]:
    """Export the backbone of ``checkpoint`` (a ``.ckpt`` or a run directory) as ``fmt``.

    Writes the weights (to :func:`output_path`) and ``backbone.json`` beside them; returns
    the JSON's contents, and under ``written`` the paths of the two files. Every check
    (format, checkpoint, packages, image size, output name) runs before anything is
    written. ``image_size`` overrides the run's ``dataset.image_size``.

    Raises:
        ConfigError: an unknown format, a missing, truncated or foreign checkpoint, a
            missing optional package or an unwritable output; one line each.
    """
    fmt = check_format(fmt)
    path = resolve_checkpoint(checkpoint)
    run_dir = run_directory(path)
    state = read_checkpoint(path)
    hparams = state["hyper_parameters"]
    if fmt == "safetensors":
        _require_safetensors()
    arch = describe_architecture(hparams)
    if fmt == "timm" and not arch.get("timm"):
        raise ConfigError(
            f"format=timm needs a backbone built from timm (backbone.name=timm/...); "
            f"this one is {arch['architecture']}: use format=torchvision"
        )
    if fmt == "torchvision" and arch.get("timm"):
        raise ConfigError(f"this backbone came from timm ({arch['architecture']}): use format=timm")
    weights = backbone_weights(state, path)
    backbone = backbone_from_state(state, path)
    dataset = run_dataset(run_dir, state)
    if image_size is None and dataset is not None:
        image_size = dataset.get("image_size")
    image_size = _check_image_size(image_size, fmt)
    target = output_path(output, run_dir, fmt)
    knn, knn_from = knn_record(run_dir, path, state)
    info: dict[str, Any] = {
        "format": fmt,
        "file": target.name,
        "load": load_line(fmt, arch, target.name),
        **{
            k: arch[k]
            for k in ("architecture", "stem", "width", "feature_dim", "plain_torchvision")
        },
        "torchvision": torchvision_note(arch),
        "input_size": [3, int(image_size), int(image_size)] if image_size is not None else None,
        "normalisation": normalisation(dataset),
        "method": checkpoint_method(state),
        "reco": checkpoint_has_reco(state),
        "epochs_trained": epochs_trained(state),
        "global_step": state.get("global_step"),
        "knn_acc": knn,
        "knn_acc_from": knn_from,
        "checkpoint": str(path.resolve()),
        "torch": torch.__version__.split("+")[0],
    }
    if fmt == "torchscript":
        info["note"] = (
            "TorchScript is deprecated by PyTorch (in favour of torch.export) but torch.jit.load "
            "still loads it"
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(
            f"output={target.parent}: cannot create the folder ({error.strerror or error})"
        ) from None
    metadata = {
        k: json.dumps(info[k])
        for k in ("architecture", "stem", "width", "feature_dim", "input_size", "normalisation")
    }
    write_weights(backbone, weights, fmt, target, image_size, metadata)
    info["exports"] = {
        **_earlier_exports(target.with_suffix(".json"), info),
        fmt: {"file": target.name, "load": info["load"]},
    }
    text = json.dumps(info, indent=2) + "\n"
    _atomic_write(target.with_suffix(".json"), lambda tmp: tmp.write_text(text))
    return {**info, "written": [str(target), str(target.with_suffix(".json"))]}


def _earlier_exports(description: Path, info: Mapping[str, Any]) -> dict[str, Any]:
    """The other formats already exported beside ``description`` from the same checkpoint and
    step whose files are still there, so that one ``backbone.json`` lists them all."""
    try:
        earlier = json.loads(description.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(earlier, dict) or any(
        earlier.get(k) != info[k] for k in ("checkpoint", "global_step")
    ):
        return {}
    exports = earlier.get("exports") if isinstance(earlier.get("exports"), dict) else {}
    return {
        fmt: entry
        for fmt, entry in exports.items()
        if fmt != info["format"]
        and isinstance(entry, dict)
        and (description.parent / str(entry.get("file"))).is_file()
    }


def _check_image_size(value: Any, fmt: str) -> int | None:
    """``value`` as a positive number of pixels (None stays None, except for torchscript)."""
    if value is None:
        if fmt == "torchscript":
            raise ConfigError(
                "format=torchscript traces at the run's image size, which is unknown here "
                "(no config.yaml beside the checkpoint's run): set image_size=, e.g. image_size=32"
            )
        return None
    if isinstance(value, bool) or not str(value).strip().isdigit() or int(str(value)) <= 0:
        raise ConfigError(
            f"image_size={value} is not a positive number of pixels: set image_size=, e.g. "
            "image_size=32"
        )
    return int(str(value))


@hydra.main(version_base="1.3", config_path="pkg://reco_lightning.conf", config_name="export")
def main(cfg: DictConfig) -> None:
    """The command: export, print where the files went and the line that loads them."""
    try:
        if OmegaConf.is_missing(cfg, "checkpoint"):
            raise ConfigError(
                "checkpoint is not set: python -m reco_lightning.export "
                "checkpoint=outputs/DATE/TIME format=torchvision "
                "(a run directory: its checkpoints/last.ckpt; or a .ckpt file)"
            )
        info = export_backbone(cfg.checkpoint, cfg.format, cfg.get("output"), cfg.get("image_size"))
    except RecoLightningError as error:
        print(f"reco_lightning.export: error: {one_line(error)}", file=sys.stderr)
        sys.exit(2)
    weights, description = info["written"]
    print(f"wrote {weights} ({info['format']}) and {description}; load it with:\n  {info['load']}")


__all__ = [
    "FORMATS",
    "backbone_weights",
    "build_line",
    "check_format",
    "describe_architecture",
    "epochs_trained",
    "export_backbone",
    "load_line",
    "normalisation",
    "output_path",
    "torchvision_note",
]


if __name__ == "__main__":
    check_or_exit(
        "reco_lightning.export", sys.argv[1:], "export"
    )  # a misspelt key gets a did-you-mean
    main()
