"""One training run: compose -> build data, method, trainer -> fit -> summarise.

Everything the run produces lands in its output directory (Hydra's run directory under the
CLI): the resolved ``config.yaml``, ``checkpoints/last.ckpt`` and the best checkpoint by
``val/knn_acc``, ``metrics.csv`` (and the trackers of the ``logger`` group) and ``summary.json``.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.data import DataLoader, Subset

from ..data import SSLDataModule
from ..data.datamodule import LabelledDataset
from ..errors import ConfigError
from ..eval.features import extract_features
from ..eval.plots import feature_map, training_curves
from ..methods import METHODS, SSLMethod
from ..reco import FeatureQueue, ReCoConfig
from ..utils.distributed import global_rank_from_environment
from ..utils.optim import check_optimizer
from .callbacks import EpochProgressBar, RunCheckpoints, TrainingClock
from .checkpoints import AtomicCheckpointIO, read_checkpoint
from .config_checks import as_dict
from .cpu_precision import bf16_cpu_warning, cpu_flags
from .launch import local_ranks
from .metrics_log import CSVHistoryLogger, MetricsHistory
from .run_dir import (
    check_fresh,
    check_writable,
    config_for_resume,
    resolve_resume,
    run_lock,
    run_of_checkpoint,
    wants_resume,
)
from .schema import check_ranges, method_arguments, reject_added_keys
from .trackers import build_trackers, log_config, log_summary

#: dataset keys that describe the data but are not DataModule arguments
DATASET_HINT_KEYS = {"queue_size"}
#: points of the t-SNE map drawn at the end of training
MAP_POINTS = 1500


def require_method(cfg: DictConfig) -> str:
    """The chosen method's name, or a ConfigError listing the choices."""
    choices = ", ".join(f"+method={name}" for name in METHODS)
    if "method" not in cfg or cfg.method is None:
        raise ConfigError(f"no method chosen: add one of {choices} to the command line")
    name = cfg.method.get("name")
    if name not in METHODS:
        raise ConfigError(f"method.name={name!r} is unknown: use one of {choices}")
    return name


def reco_settings(cfg: DictConfig) -> ReCoConfig | None:
    """ReCo's checked settings, or None when ``+reco`` is absent or ``off`` (the same run
    either way); whether ReCo is on is decided by :meth:`ReCoConfig.from_mapping` alone."""
    settings = as_dict(cfg.get("reco"), "reco")
    return ReCoConfig.from_mapping(settings) if settings else None


def build_datamodule(cfg: DictConfig, weak_view: bool) -> SSLDataModule:
    settings = {
        k: v for k, v in as_dict(cfg.dataset, "dataset").items() if k not in DATASET_HINT_KEYS
    }
    return SSLDataModule(**settings, weak_view=weak_view, seed=cfg.seed)


def build_trainer(
    cfg: DictConfig, output_dir: Path, extra_callbacks: list | None = None
) -> L.Trainer:
    settings = as_dict(cfg.trainer, "trainer")
    # The CSV log shares the run directory with Hydra's files and config.yaml; Lightning
    # warns about any non-empty directory, although it only ever replaces its metrics.csv.
    warnings.filterwarnings(
        "ignore", message=r"Experiment logs directory .* exists and is not empty"
    )
    # Lightning 2.6 under torch 2.14 warns about its own use of torch's pytree API
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    csv_log = CSVHistoryLogger(save_dir=str(output_dir), name="", version="")
    loggers: list[Logger] = [csv_log, *build_trackers(cfg.get("logger"), output_dir)]
    checkpoints = RunCheckpoints(output_dir / "checkpoints")
    callbacks = [
        checkpoints,
        TrainingClock(),
        MetricsHistory(csv_log),
        LearningRateMonitor(logging_interval="epoch"),
        *(extra_callbacks or []),
    ]
    if settings.get("enable_progress_bar", True):
        callbacks.append(EpochProgressBar())
    # use_distributed_sampler=False: the DataModule shards across ranks itself (exact
    # validation sets, resumable epochs)
    try:
        return L.Trainer(
            **settings,
            logger=loggers,
            callbacks=callbacks,
            default_root_dir=str(output_dir),
            use_distributed_sampler=False,
            plugins=[AtomicCheckpointIO()],
            enable_checkpointing=False,  # RunCheckpoints writes them (Lightning's would too)
        )
    except (ValueError, TypeError, MisconfigurationException) as error:
        # Lightning checks the values of trainer.* (precision, devices, strategy ...) itself
        reason = " ".join(str(error).split())
        raise ConfigError(
            f"Lightning refused the trainer settings: {reason} (see trainer.* on the command line)"
        ) from None


def build_method(
    cfg: DictConfig, datamodule: SSLDataModule, trainer: L.Trainer, reco: ReCoConfig | None
) -> SSLMethod:
    name = require_method(cfg)
    method_settings = {
        key: value for key, value in as_dict(cfg.method, "method").items() if key != "name"
    }
    arguments = method_arguments(cfg)
    check_optimizer(arguments["optimizer"], arguments["optimizer_kernel"])
    if arguments["small_stem"] == "auto":
        arguments["small_stem"] = datamodule.image_size <= 64
    global_batch = (
        datamodule.batch_size * trainer.world_size * int(cfg.trainer.accumulate_grad_batches)
    )
    arguments["lr"] *= global_batch / 256  # optimizer.lr is for a global batch of 256
    model = METHODS[name](
        num_classes=datamodule.num_classes, reco=reco, **arguments, **method_settings
    )
    # Every queue a method or ReCo keeps is a FeatureQueue named by its setting, so this
    # check knows no method: each must hold one global batch of keys.
    for queue in model.modules():
        if isinstance(queue, FeatureQueue) and queue.size < global_batch:
            raise ConfigError(
                f"{queue.name}={queue.size} cannot hold one global batch of {global_batch} keys: "
                f"raise {queue.name} (or dataset.queue_size) to at least {global_batch}"
            )
    return model


def train(
    cfg: DictConfig,
    output_dir: Path,
    callbacks: list | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Run one training job described by ``cfg``; returns (and writes) its summary.

    ``callbacks`` are added to the Trainer's (tests use them to interrupt a run).
    ``overrides`` are the command line's settings (the CLI passes them): a resume applies
    them to the run's stored config; without them ``cfg`` is taken whole. A resume of a
    run directory continues in that directory, wherever ``output_dir`` points (see
    :mod:`reco_lightning.run.run_dir`). Under ``strategy=ddp`` or ``ddp_cpu`` this process is
    rank 0 and starts the other local ranks itself (see :mod:`reco_lightning.run.launch`).
    """
    rank_zero = global_rank_from_environment() == 0
    cfg, output_dir, resume_from = prepare_run(cfg, output_dir, overrides, rank_zero)
    with run_lock(output_dir, take=rank_zero):  # one process per run directory
        return _train_locked(cfg, output_dir, resume_from, callbacks, rank_zero)


def _train_locked(
    cfg: DictConfig,
    output_dir: Path,
    resume_from: Path | None,
    callbacks: list | None,
    rank_zero: bool,
) -> dict[str, Any]:
    """:func:`train` in the run directory that this process holds."""
    require_method(cfg)
    reject_added_keys(cfg)
    check_ranges(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    reco = reco_settings(cfg)
    datamodule = build_datamodule(cfg, weak_view=reco is not None)
    if (
        cfg.dataset.get("image_size") is None
    ):  # an image folder: record the size inferred from the data
        with open_dict(cfg):
            cfg.dataset.image_size = datamodule.image_size
    check_strategy(cfg)
    trainer = build_trainer(cfg, output_dir, callbacks)
    if rank_zero and (
        slow_bf16 := bf16_cpu_warning(
            trainer.precision, isinstance(trainer.accelerator, CPUAccelerator), cpu_flags()
        )
    ):
        warnings.warn(f"reco_lightning: {slow_bf16}", UserWarning, stacklevel=2)
    model = build_method(cfg, datamodule, trainer, reco)
    if rank_zero:
        check_writable(output_dir)
        (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        log_config(trainer.loggers[1:], cfg)  # the trackers beside the CSV log

    with local_ranks(trainer, _for_workers(cfg, resume_from), output_dir):
        knn_at_init = _random_init_knn(
            trainer, model, datamodule, output_dir, resume_from, rank_zero
        )
        started = time.time()
        trainer.fit(
            model,
            datamodule=datamodule,
            ckpt_path=str(resume_from) if resume_from else None,
            weights_only=True,  # read_checkpoint has vetted it; Lightning reads it safely too
        )
        elapsed = time.time() - started
        if "val/knn_acc" not in trainer.callback_metrics:  # resumed a run that had already finished
            finished = _finished_summary(output_dir, trainer.global_step)
            if finished is not None:
                if rank_zero:
                    print(
                        f"reco_lightning: {output_dir} had already finished ({finished['epochs']} "
                        "epochs); nothing trained: raise trainer.max_epochs to extend it"
                    )
                return finished
            loggers, trainer.loggers = trainer.loggers, []  # measure, without a second row
            trainer.validate(model, datamodule=datamodule, verbose=False)
            trainer.loggers = loggers
        return _summarise(cfg, trainer, reco, elapsed, knn_at_init, output_dir, rank_zero)


def prepare_run(
    cfg: DictConfig, output_dir: Path, overrides: list[str] | None, rank_zero: bool
) -> tuple[DictConfig, Path, Path | None]:
    """The run's config, its directory and the checkpoint it resumes from, if any (see
    :mod:`.run_dir`)."""
    resume_from = resolve_resume(cfg.get("resume"), output_dir)
    if resume_from is not None:
        read_checkpoint(
            resume_from
        )  # a truncated or foreign file: one line now, not a traceback later
        run_dir = run_of_checkpoint(resume_from)
        if run_dir is not None:
            cfg = config_for_resume(cfg, run_dir, overrides, cfg.get("resume"))
            output_dir = run_dir
    elif rank_zero and not wants_resume(cfg.get("resume")):
        check_fresh(output_dir)
    if rank_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
    return cfg, output_dir, resume_from


def check_strategy(cfg: DictConfig) -> None:
    """``strategy=ddp`` needs GPUs; on a machine without one, say which preset runs on CPUs."""
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if accelerator in {"gpu", "cuda"} and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator} (strategy=ddp) needs a CUDA GPU and this machine "
            "has none: "
            "use strategy=ddp_cpu for DDP over CPU processes, or strategy=auto"
        )


def _for_workers(cfg: DictConfig, resume_from: Path | None) -> DictConfig:
    """The job's config as the other ranks must see it: ``resume`` already decided."""
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.resume = str(resume_from) if resume_from else None
    return cfg


def _random_init_knn(
    trainer: L.Trainer,
    model: SSLMethod,
    datamodule: SSLDataModule,
    output_dir: Path,
    resume_from: Path | None,
    rank_zero: bool,
) -> float | None:
    """kNN accuracy of the untrained backbone; measured once per run, reread on resume."""
    record = (resume_from.parent.parent if resume_from else output_dir) / "random_init.json"
    if resume_from is not None:
        return json.loads(record.read_text()).get("knn_acc") if record.is_file() else None
    results = trainer.validate(model, datamodule=datamodule, verbose=False)
    knn = results[0].get("val/knn_acc") if results else None
    if rank_zero:
        record.write_text(json.dumps({"knn_acc": knn}))
    return knn


def _finished_summary(output_dir: Path, step: int) -> dict[str, Any] | None:
    """The ``summary.json`` a finished run wrote at ``step``, or None."""
    try:
        summary = json.loads((output_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and summary.get("steps") == step else None


def _summarise(
    cfg: DictConfig,
    trainer: L.Trainer,
    reco: dict[str, Any] | None,
    elapsed: float,
    knn_at_init: float | None,
    output_dir: Path,
    rank_zero: bool,
) -> dict[str, Any]:
    """The run's summary: written to ``summary.json`` and printed by rank 0."""
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    summary = {
        "method": cfg.method.name,
        "reco": reco is not None,
        "dataset": cfg.dataset.name,
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "train_time_s": round(_training_seconds(trainer, elapsed), 1),
        "knn_acc": metrics.get("val/knn_acc"),
        "linear_acc": metrics.get("val/linear_acc"),
        "knn_acc_random_init": knn_at_init,
        "best_checkpoint": _best_checkpoint(trainer),
        "last_checkpoint": str(output_dir / "checkpoints" / "last.ckpt"),
        "output_dir": str(output_dir),
    }
    if rank_zero:
        if cfg.get("pictures", True):
            summary["pictures"] = _pictures(trainer, output_dir, summary)
        (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        log_summary(trainer.loggers[1:], summary, trainer.global_step)
        print(format_summary(summary))
    return summary


def _pictures(trainer: L.Trainer, output_dir: Path, summary: dict[str, Any]) -> dict[str, str]:
    """Training curves and a t-SNE map of the validation features, as PNG in the run directory."""
    model, datamodule = trainer.lightning_module, trainer.datamodule
    reco = "+ ReCo" if summary["reco"] else "(ReCo off)"
    title = f"{summary['method']} {reco} on {summary['dataset']}"
    pictures = {}
    metrics = output_dir / "metrics.csv"
    if metrics.is_file():
        pictures["curves"] = str(
            training_curves(metrics, output_dir / "training_curves.png", title)
        )
    chosen = torch.randperm(datamodule.val_size, generator=torch.Generator().manual_seed(0))[
        :MAP_POINTS
    ]
    val = LabelledDataset(datamodule.splits.val, datamodule.eval_transform)
    loader = DataLoader(Subset(val, chosen.tolist()), batch_size=datamodule.eval_batch_size)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    features, labels = extract_features(
        model.backbone, loader, device, "features (val)", progress=False
    )
    map_path, map_title = output_dir / "feature_map.png", f"{title}: validation features (t-SNE)"
    pictures["feature_map"] = str(
        feature_map(features, labels, map_path, map_title, max_points=MAP_POINTS)
    )
    return pictures


def _training_seconds(trainer: L.Trainer, elapsed: float) -> float:
    """Seconds spent training over the whole run, resumed parts included (TrainingClock's
    count, saved in checkpoints); this process's fit time without the clock."""
    for callback in trainer.callbacks:
        if isinstance(callback, TrainingClock):
            return callback.seconds
    return elapsed


def _best_checkpoint(trainer: L.Trainer) -> str | None:
    """The run's best-*.ckpt (the highest val/knn_acc), if one was written."""
    for callback in trainer.callbacks:
        if isinstance(callback, RunCheckpoints) and callback.best_path:
            return callback.best_path
    return None


def format_summary(summary: dict[str, Any]) -> str:
    """The final summary as a few aligned lines."""

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.2f}%"

    return "\n".join(
        [
            "",
            f"== reco_lightning: {summary['method']}{' + ReCo' if summary['reco'] else ''} on "
            f"{summary['dataset']}",
            f"epochs {summary['epochs']}, steps {summary['steps']}, training time "
            f"{summary['train_time_s']:.1f} s",
            f"kNN accuracy          {pct(summary['knn_acc'])}",
            f"kNN at random init    {pct(summary['knn_acc_random_init'])}",
            f"linear-probe accuracy {pct(summary['linear_acc'])}",
            f"outputs in            {summary['output_dir']}",
        ]
    )
