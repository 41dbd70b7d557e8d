"""Train a plain method built from lightly's parts through our whole training job.

    .venv-peers/bin/python benchmarks/peer_quality.py +method=moco dataset=imagefolder ... \
        hydra.run.dir=RUN

A strong-baseline check for the quality protocol (``benchmarks/quality.py run --cells
baselines``): is our plain MoCo, SimCLR or BYOL as good as the same method written with a
peer library? Only the method's own part changes: the heads, the loss and the momentum
update are lightly's, put together as in ``benchmarks/peers.py`` (the same classes, reused
here). Everything else is our job, unchanged: the data and its views, the backbone and its
initialisation, the optimizer and learning-rate schedule of the method's preset, the online
probe, the per-epoch kNN monitor, checkpoints and ``summary.json``. So a difference in
accuracy is a difference between the two implementations of the method.

It takes the CLI's overrides (``+method=...``, ``dataset=...``, ``hydra.run.dir=...`` for the
run directory) and needs a Python with both packages (see ``benchmarks/peers.py``).
ReCo stays off: the peers have no ReCo.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402  (the lightly models, and the check that lightly imports)

from reco_lightning import methods as methods_module  # noqa: E402
from reco_lightning.methods.base import MethodOutput, SSLMethod  # noqa: E402
from reco_lightning.run import train as train_module  # noqa: E402
from reco_lightning.utils.optim import split_decay_groups  # noqa: E402


class LightlyPeer(SSLMethod):
    """Our base class (backbone, probe, optimizer, schedule, kNN) around a lightly model.

    Takes every key of the three method presets; lightly's model reads those it knows.
    ``queue_size`` is MoCo's memory bank; ``predictor_lr_scale`` gives BYOL's prediction
    head its own learning rate, as our BYOL preset does (``method.predictor_lr_scale``).
    """

    peer_name = ""

    def __init__(
        self,
        temperature: float = 0.2,
        queue_size: int = 4096,
        momentum: float = 0.99,
        momentum_schedule: str = "constant",
        symmetric: bool = False,
        proj_hidden_dim: int = 2048,
        proj_output_dim: int = 128,
        proj_output_bn: bool = True,
        pred_hidden_dim: int = 4096,
        predictor_lr_scale: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if self.peer_name == "moco" and (symmetric or momentum_schedule != "constant"):
            raise ValueError(
                "the lightly MoCo peer is one-sided with a constant momentum, as our preset"
            )
        settings = dict(
            temperature=temperature,
            momentum=momentum,
            proj_hidden_dim=proj_hidden_dim,
            proj_output_dim=proj_output_dim,
            pred_hidden_dim=pred_hidden_dim,
        )
        if self.peer_name == "moco":
            self.peer = peers.LightlyMoCo(self.backbone, self.feature_dim, queue_size, settings)
        elif self.peer_name == "simclr":
            self.peer = peers.LightlySimCLR(self.backbone, self.feature_dim, settings)
        else:
            self.peer = peers.LightlyBYOL(self.backbone, self.feature_dim, 1, settings)
        del self.peer.probe  # our classifier is the probe
        self.predictor_lr_scale = predictor_lr_scale

    def parameter_groups(self) -> list[dict[str, Any]]:
        head = getattr(self.peer, "prediction_head", None)
        if head is None or self.predictor_lr_scale == 1.0:
            return super().parameter_groups()
        head_ids = {id(p) for p in head.parameters()}
        rest = [g for g in super().parameter_groups()]
        for group in rest:
            group["params"] = [p for p in group["params"] if id(p) not in head_ids]
        for group in split_decay_groups(head):
            rest.append({**group, "lr": self.hparams.lr * self.predictor_lr_scale})
        return rest

    def on_train_start(self) -> None:
        if self.peer_name == "byol":  # lightly's cosine schedule runs over the whole run
            self.peer.total_steps = self.total_steps
            self.peer.steps_done = self.global_step

    def method_step(self, view1: Tensor, view2: Tensor) -> MethodOutput:
        loss, features = self.peer.method_loss(view1, view2)
        self.peer.steps_done += 1
        empty = features.new_zeros(features.shape[0], 1)
        return MethodOutput(loss, empty, empty, features)


def peer_class(name: str) -> type[LightlyPeer]:
    return type(f"Lightly{name.capitalize()}", (LightlyPeer,), {"peer_name": name})


def main(argv: list[str]) -> None:
    if peers.LIGHTLY_IMPORT_ERROR is not None:
        sys.exit(peers.missing_lightly_message())
    run_dir = next((a.split("=", 1)[1] for a in argv if a.startswith("hydra.run.dir=")), None)
    if run_dir is None:
        sys.exit("give the run directory as hydra.run.dir=PATH")
    overrides = [a for a in argv if not a.startswith("hydra.")]
    if any(a.startswith("+reco=on") for a in overrides):
        sys.exit("the peers have no ReCo: use +reco=off")
    with initialize_config_module(config_module="reco_lightning.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    name = cfg.method.name
    methods_module.METHODS[name] = peer_class(name)  # train() builds the method from this table
    train_module.METHODS[name] = methods_module.METHODS[name]
    train_module.train(cfg, Path(run_dir))


if __name__ == "__main__":
    main(sys.argv[1:])
