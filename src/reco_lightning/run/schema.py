"""The config schema: one dataclass per config group, registered in Hydra's ConfigStore.

The schema is the single source of each group's keys, types and defaults: Hydra composes
the YAML presets on top of it, so a misspelt key or a value of the wrong type fails while
the config is composed, and the presets state only what differs. ``backbone``,
``optimizer`` and ``knn`` are written out below, each field naming the method argument it
feeds (:func:`method_arguments`: no hand-kept list of keyword arguments); the other groups
are read off the constructor they configure (:func:`schema_of`), so a new method gets its
schema from its ``__init__``. Value checks stay with the object a group builds, so the
Python API checks the same values as the CLI.

>>> from omegaconf import OmegaConf
>>> OmegaConf.structured(KNNConfig).k
200
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

import lightning as L
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from ..data import SSLDataModule
from ..errors import ConfigError
from ..methods import METHODS
from ..reco import ReCoConfig
from .config_checks import reject_unknown_keys


def feeds(argument: str, default: Any) -> Any:
    """A schema field whose value is the method's keyword argument ``argument``."""
    return field(default=default, metadata={"argument": argument})


@dataclass
class BackboneConfig:
    """``backbone.*``: the network whose features are learnt.

    ``name``: ``resnet18`` | ``resnet34`` | ``resnet50`` (torchvision, random init) or
    ``timm/<model>``. ``width``: channels of the first stage (64 = torchvision's ResNet).
    ``small_stem``: ``auto`` takes the 3x3 stem without max-pool for images of 64 px or
    less. ``zero_init_residual``: start each residual block as its shortcut.
    ``channels_last`` and ``compile``: see benchmarks/channels_last.py and fast_paths.py.
    """

    name: str = feeds("backbone", "resnet18")
    width: int = feeds("backbone_width", 64)
    small_stem: Any = feeds("small_stem", "auto")
    zero_init_residual: bool = feeds("zero_init_residual", True)
    channels_last: bool = feeds("channels_last", False)
    compile: bool = feeds("compile_backbone", False)


@dataclass
class OptimizerConfig:
    """``optimizer.*``. ``lr`` is the peak learning rate for a global batch of 256, scaled
    linearly; ``classifier_lr`` is the online probe's; ``kernel`` (``auto`` | ``loop`` |
    ``foreach`` | ``fused``, the last for SGD only) is how the update runs."""

    name: str = feeds("optimizer", "sgd")
    lr: float = feeds("lr", 0.3)
    weight_decay: float = feeds("weight_decay", 1e-4)
    momentum: float = feeds("sgd_momentum", 0.9)
    warmup_epochs: float = feeds("warmup_epochs", 0.0)
    classifier_lr: float = feeds("classifier_lr", 0.1)
    kernel: str = feeds("optimizer_kernel", "auto")


@dataclass
class KNNConfig:
    """``knn.*``: the weighted kNN monitor of every validation epoch."""

    k: int = feeds("knn_k", 200)
    temperature: float = feeds("knn_temperature", 0.1)


@dataclass
class DiagnosticsConfig:
    """``diagnostics.*``: what training measures beside its losses. ``term_grad_steps``:
    steps per epoch that log the backbone's gradient norm from each loss term alone
    (``train/grad_norm_*``, ``train/grad_share_*``; one extra backward pass per term each)."""

    term_grad_steps: int = feeds("term_grad_steps", 0)


#: the written-out groups whose fields feed the method's shared arguments
SHARED_GROUPS: dict[str, type] = {
    "backbone": BackboneConfig,
    "optimizer": OptimizerConfig,
    "knn": KNNConfig,
    "diagnostics": DiagnosticsConfig,
}


def _config_type(hint: Any) -> Any:
    """The type OmegaConf can enforce for an annotation: a scalar, an optional scalar, or Any."""
    scalars = (int, float, bool, str)
    if hint in scalars:
        return hint
    arguments = typing.get_args(hint)
    if (
        typing.get_origin(hint) in (typing.Union, types.UnionType)
        and len(arguments) == 2
        and type(None) in arguments
    ):
        inner = next(a for a in arguments if a is not type(None))
        return Optional[inner] if inner in scalars else Any
    return Any


def schema_of(
    target: Callable[..., Any],
    schema_name: str,
    skip: tuple[str, ...] = (),
    required: tuple[str, ...] = (),
    **extra: Any,
) -> type:
    """A dataclass of ``target``'s keyword arguments (keys, enforceable types, defaults),
    without ``skip``, with no default for ``required`` (a preset must set them; a ``???``
    in YAML cannot take a default away) and with the ``extra`` fields (name -> default) first."""
    function = target.__init__ if inspect.isclass(target) else target
    hints = typing.get_type_hints(function)
    specs: list[tuple[str, Any, Any]] = [
        (key, _config_type(type(value)), field(default=value)) for key, value in extra.items()
    ]
    for parameter in inspect.signature(target).parameters.values():
        if (
            parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL)
            or parameter.name in skip
        ):
            continue
        default = parameter.default
        if default is inspect.Parameter.empty or parameter.name in required:
            default = "???"  # mandatory: OmegaConf's missing value
        elif isinstance(default, (list, tuple, dict)):
            default = field(
                default_factory=lambda value=default: (
                    list(value) if isinstance(value, tuple) else value
                )
            )
        specs.append(
            (
                parameter.name,
                _config_type(hints.get(parameter.name, Any)),
                default if isinstance(default, dataclasses.Field) else field(default=default),
            )
        )
    return dataclasses.make_dataclass(schema_name, specs)


#: keyword arguments of the Trainer that the run sets itself
TRAINER_OWN = (
    "logger",
    "callbacks",
    "default_root_dir",
    "use_distributed_sampler",
    "plugins",
    "enable_checkpointing",  # the run writes its checkpoints itself (run.callbacks.RunCheckpoints)
)
DatasetSchema = schema_of(
    SSLDataModule,
    "DatasetSchema",
    skip=("weak_view", "seed"),
    required=("name", "root"),
    queue_size=4096,
)
TrainerSchema = schema_of(L.Trainer, "TrainerSchema", skip=TRAINER_OWN)
ReCoSchema = schema_of(ReCoConfig, "ReCoSchema", enabled=True)
METHOD_SCHEMAS: dict[str, type] = {
    name: schema_of(cls, f"{cls.__name__}Schema", name=name) for name, cls in METHODS.items()
}


@dataclass
class RunConfig:
    """The top of ``python -m reco_lightning``'s config (``conf/config.yaml`` fills it)."""

    seed: int = 0
    resume: Optional[str] = None
    pictures: bool = True
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    knn: KNNConfig = field(default_factory=KNNConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    trainer: Any = field(default_factory=TrainerSchema)
    dataset: Any = None
    method: Any = None
    reco: Any = None
    logger: Any = None


def register() -> None:
    """Store the schema in Hydra's ConfigStore, under the names the presets' defaults lists use."""
    store = ConfigStore.instance()
    store.store(name="run_schema", node=RunConfig)
    store.store(group="schema", name="dataset", node=DatasetSchema)
    store.store(group="schema", name="reco", node=ReCoSchema)
    for name, schema in METHOD_SCHEMAS.items():
        store.store(group="schema/method", name=name, node=schema)


def reject_added_keys(cfg: DictConfig) -> None:
    """A key added with ``+`` that its group's schema does not have (``+trainer.max_epoch=2``)
    is a ConfigError with a did-you-mean; Hydra's struct mode has let it through."""
    for group in (
        "backbone",
        "optimizer",
        "knn",
        "diagnostics",
        "trainer",
        "dataset",
        "method",
        "reco",
    ):
        node = cfg.get(group)
        schema = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
        if schema is not None and dataclasses.is_dataclass(schema):
            reject_unknown_keys(group, node.keys(), [f.name for f in dataclasses.fields(schema)])


#: The range of every numeric setting, declared once here and checked once per run by
#: :func:`check_ranges` (before any value is scaled or used): ``(low, high, low included,
#: high included)``; every value must also be finite. ``dataset.batch_size`` is at least 2
#: because every method compares an image with others in its batch (the negatives of an
#: InfoNCE loss, the batch statistics of the projector's BatchNorm).
RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "seed": (0, 2**32 - 1, True, True),  # NumPy's seed range
    "optimizer.lr": (0, math.inf, False, False),
    "optimizer.weight_decay": (0, math.inf, True, False),
    "optimizer.momentum": (0, 1, True, False),
    "optimizer.warmup_epochs": (0, math.inf, True, False),
    "optimizer.classifier_lr": (0, math.inf, False, False),
    "knn.k": (1, math.inf, True, False),
    "knn.temperature": (0, math.inf, False, False),
    "diagnostics.term_grad_steps": (0, math.inf, True, False),
    "dataset.batch_size": (2, math.inf, True, False),
    "method.temperature": (0, math.inf, False, False),
    "method.momentum": (0, 1, True, True),
    "method.lambda_offdiag": (0, math.inf, False, False),
    "reco.w_global": (0, math.inf, True, False),
    "reco.w_local": (0, math.inf, True, False),
    "reco.tau_student": (0, math.inf, False, False),
    "reco.tau_teacher": (0, math.inf, False, False),
    "reco.tau_local": (0, math.inf, False, False),
    "reco.alpha": (0, math.inf, False, False),
    "reco.teacher_momentum": (0, 1, True, True),
    "reco.warmup_epochs": (0, math.inf, True, False),
    "trainer.max_epochs": (1, math.inf, True, False),
}


def _describe_range(low: float, high: float, low_in: bool, high_in: bool) -> str:
    def number(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else f"{x:g}"

    if high == math.inf:
        return f"{'>=' if low_in else '>'} {number(low)}"
    return f"in {'[' if low_in else '('}{number(low)}, {number(high)}{']' if high_in else ')'}"


def check_ranges(cfg: DictConfig) -> None:
    """A one-line ConfigError for the first setting of :data:`RANGES` that is not a finite
    number in its range, and for ``trainer.limit_train_batches=0`` (nothing would train)."""
    for key, (low, high, low_in, high_in) in RANGES.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        fits = (value >= low if low_in else value > low) and (
            value <= high if high_in else value < high
        )
        if not math.isfinite(value) or not fits:
            raise ConfigError(
                f"{key}={value} must be a finite number "
                f"{_describe_range(low, high, low_in, high_in)}"
                + (
                    ": a method compares each image with others of its batch"
                    if key == "dataset.batch_size"
                    else ""
                )
            )
    limit = OmegaConf.select(cfg, "trainer.limit_train_batches", default=None)
    if isinstance(limit, (int, float)) and not isinstance(limit, bool) and limit == 0:
        raise ConfigError(
            "trainer.limit_train_batches=0 trains nothing: give a positive number of "
            "batches or a fraction of the epoch, or leave it out"
        )


def method_arguments(cfg: DictConfig) -> dict[str, Any]:
    """The shared keyword arguments of a method, read off the groups' schema fields."""
    return {
        spec.metadata["argument"]: cfg[group][spec.name]
        for group, schema in SHARED_GROUPS.items()
        for spec in dataclasses.fields(schema)
    }


__all__ = [
    "BackboneConfig",
    "DiagnosticsConfig",
    "KNNConfig",
    "OptimizerConfig",
    "RunConfig",
    "method_arguments",
    "register",
    "reject_added_keys",
    "schema_of",
]
