"""Short end-to-end runs of every method through the same path as the CLI."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch

from reco_lightning.errors import ConfigError, ImageLoadError
from reco_lightning.methods import METHODS
from reco_lightning.run.train import train


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def logged_values(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(row[key]) for row in rows if row.get(key) not in (None, "")]


@pytest.mark.parametrize("reco", ["off", "on"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_few_steps_train_log_and_checkpoint(compose_config, tiny, tmp_path, method, reco):
    no_warmup = ["reco.warmup_epochs=0"] if reco == "on" else []
    cfg = compose_config(
        f"+method={method}", f"+reco={reco}", *tiny, "trainer.log_every_n_steps=1", *no_warmup
    )
    summary = train(cfg, tmp_path)

    assert summary["steps"] == 3
    assert 0.0 <= summary["knn_acc"] <= 1.0 and 0.0 <= summary["knn_acc_random_init"] <= 1.0
    assert json.loads((tmp_path / "summary.json").read_text())["method"] == method
    assert (tmp_path / "config.yaml").is_file()

    rows = read_metrics(tmp_path)
    values = logged_values(rows, "train/loss_method_step")
    assert len(values) == 3 and all(math.isfinite(v) for v in values)
    if reco == "on":
        # step 0 meets an empty relation bank: the global term is skipped there, and logged so
        values = logged_values(rows, "train/loss_global_step")
        assert len(values) == 2 and all(math.isfinite(v) for v in values)
        assert logged_values(rows, "train/reco_global_skipped") == [pytest.approx(1 / 3)]
        weights = logged_values(rows, "train/reco_w_global")
        if METHODS[method].reco_scale == "absolute":
            assert weights == [1.0]
        else:  # relative: the weight in effect is the method loss over the term's value
            assert len(weights) == 1 and weights[0] > 0
        assert all(math.isfinite(v) for v in logged_values(rows, "train/loss_local_step"))
    if reco == "off":
        assert (
            not logged_values(rows, "train/loss_global_step")
            if "train/loss_global_step" in rows[0]
            else True
        )
    for diagnostic in (
        "val/purity_at_10",
        "val/purity_at_50",
        "val/cos_gap",
        "val/alignment",
        "val/uniformity",
    ):
        assert logged_values(rows, diagnostic), (
            diagnostic
        )  # logged at the end of each validation epoch

    last = tmp_path / "checkpoints" / "last.ckpt"
    assert last.is_file()
    state = torch.load(last, map_location="cpu", weights_only=False)["state_dict"]
    assert ("reco.bank.features" in state) is (reco == "on")
    assert any(
        name.startswith("checkpoints/best-") or "best-" in name
        for name in [p.name for p in (tmp_path / "checkpoints").iterdir()]
    )


@pytest.mark.slow
def test_reco_off_reproduces_the_plain_methods_loss(compose_config, tiny, tmp_path):
    """Same seed: `+reco=off` and no `+reco` give the same losses, step for step."""
    losses = []
    for i, extra in enumerate([[], ["+reco=off"]]):
        cfg = compose_config("+method=simclr", *tiny, "trainer.log_every_n_steps=1", *extra)
        train(cfg, tmp_path / str(i))
        losses.append(logged_values(read_metrics(tmp_path / str(i)), "train/loss_method_step"))
    assert losses[0] == losses[1]


def test_queue_smaller_than_global_batch_is_refused(compose_config, tiny, tmp_path):
    cfg = compose_config("+method=moco", *tiny, "method.queue_size=16")
    with pytest.raises(ConfigError, match="method.queue_size=16"):
        train(cfg, tmp_path)


def test_reco_bank_smaller_than_global_batch_is_refused(compose_config, tiny, tmp_path):
    cfg = compose_config("+method=byol", "+reco=on", *tiny, "reco.bank_size=8")
    with pytest.raises(ConfigError, match="reco.bank_size=8"):
        train(cfg, tmp_path)


@pytest.mark.parametrize(
    "override, setting",
    [
        ("method.temperature=0", "method.temperature"),
        ("+trainer.max_epoch=2", "trainer.max_epoch"),
        ("+method.queue_sise=4", "method.queue_sise"),
        ("dataset.batch_size=5000", "dataset.batch_size"),
        ("optimizer.name=adamw", "optimizer.name"),
        ("backbone.name=vgg11", "backbone.name"),
        (
            "optimizer.kernel=fused",
            "optimizer.kernel",
        ),  # the MoCo preset's LARS has no fused kernel
        ("optimizer.kernel=turbo", "optimizer.kernel"),
    ],
)
def test_bad_settings_stop_before_training(compose_config, tiny, tmp_path, override, setting):
    cfg = compose_config("+method=moco", *tiny, override)
    with pytest.raises(ConfigError, match=setting.replace(".", r"\.")):
        train(cfg, tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_imagefolder_without_root_names_the_setting(compose_config, tiny, tmp_path):
    cfg = compose_config("+method=moco", "dataset=imagefolder", *tiny)
    with pytest.raises(ConfigError, match=r"dataset\.root must be set"):
        train(cfg, tmp_path)


@pytest.mark.slow
def test_corrupt_image_stops_training_with_its_path(compose_config, tiny, tmp_path):
    from PIL import Image

    root = tmp_path / "images"
    for split, count in (("train", 40), ("val", 6)):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                shade = 40 if label == "a" else 200
                Image.new("RGB", (16, 16), (shade, i * 5, 255 - shade)).save(folder / f"{i}.png")
    broken = root / "train" / "b" / "7.png"
    broken.write_bytes(b"this is not a png")
    cfg = compose_config(
        "+method=simclr",
        "dataset=imagefolder",
        f"dataset.root={root}",
        *tiny,
        "dataset.num_workers=1",
        "dataset.persistent_workers=false",
        "dataset.pin_memory=false",
        "trainer.limit_train_batches=1.0",
    )
    with pytest.raises(ImageLoadError, match="7.png"):
        train(cfg, tmp_path / "run")


@pytest.mark.slow
def test_channels_last_backbone_trains(compose_config, tiny, tmp_path):
    from reco_lightning.run.train import build_datamodule, build_method, build_trainer

    cfg = compose_config("+method=moco", "+reco=on", *tiny, "backbone.channels_last=true")
    summary = train(cfg, tmp_path)
    assert summary["steps"] == 3 and math.isfinite(summary["knn_acc"])
    model = build_method(
        cfg, build_datamodule(cfg, weak_view=True), build_trainer(cfg, tmp_path / "x"), None
    )
    conv = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    target_conv = next(m for m in model.target_backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert target_conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_fast_path_settings_reach_the_module(compose_config, tiny, tmp_path):
    from reco_lightning.run.train import build_datamodule, build_method, build_trainer

    cfg = compose_config(
        "+method=simclr",
        *tiny,
        "optimizer.name=sgd",
        "optimizer.kernel=fused",
        "backbone.compile=true",
    )
    model = build_method(
        cfg, build_datamodule(cfg, weak_view=False), build_trainer(cfg, tmp_path / "x"), None
    )
    assert model.hparams.optimizer_kernel == "fused" and model.hparams.compile_backbone is True
    assert model.backbone._compiled_call_impl is None
    model.setup("fit")
    assert model.backbone._compiled_call_impl is not None


@pytest.mark.parametrize("setting", ["true", "false"])
def test_zero_init_residual_setting_reaches_the_backbone(compose_config, tiny, tmp_path, setting):
    from torchvision.models.resnet import BasicBlock

    from reco_lightning.run.train import build_datamodule, build_method, build_trainer

    cfg = compose_config("+method=byol", *tiny, f"backbone.zero_init_residual={setting}")
    model = build_method(
        cfg, build_datamodule(cfg, weak_view=False), build_trainer(cfg, tmp_path / "x"), None
    )
    scales = [m.bn2.weight for m in model.backbone.modules() if isinstance(m, BasicBlock)]
    assert scales and all(bool(torch.count_nonzero(w)) is (setting == "false") for w in scales)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["moco", "byol"])
def test_method_ema_moves_once_per_optimizer_step_with_accumulation(
    compose_config, tiny, tmp_path, method, monkeypatch
):
    """4 micro-batches with accumulate_grad_batches=2: the target moves twice, not four times."""
    import reco_lightning.methods.momentum as momentum

    updates = []
    original = momentum.ema_update
    monkeypatch.setattr(
        momentum, "ema_update", lambda t, o, m: updates.append(m) or original(t, o, m)
    )
    cfg = compose_config(
        f"+method={method}",
        *tiny,
        "trainer.limit_train_batches=4",
        "trainer.accumulate_grad_batches=2",
    )
    summary = train(cfg, tmp_path)
    assert summary["steps"] == 2
    assert len(updates) == 2 * 2  # two steps, two (online, target) pairs each


class ExpectedTargets(L.Callback):
    """Keeps its own EMA of the first (online, target) pair, updated by hand after each
    optimizer step, and checks the module's target against it before every micro-batch."""

    def __init__(self) -> None:
        self.last_step, self.expected, self.checked = 0, None, 0

    def _pair(self, module):
        online, target = module.momentum_pairs()[0]
        return next(online.parameters()).detach(), next(target.parameters()).detach()

    def _check(self, module) -> None:
        torch.testing.assert_close(self._pair(module)[1], self.expected, rtol=0, atol=1e-6)
        self.checked += 1

    def on_train_start(self, trainer, pl_module) -> None:
        self.expected = self._pair(pl_module)[1].clone()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._check(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # runs before the module's own hook, which makes the update
        if trainer.global_step > self.last_step:  # an optimizer step happened in this micro-batch
            self.last_step = trainer.global_step
            m = pl_module.current_momentum()
            self.expected = m * self.expected + (1 - m) * self._pair(pl_module)[0].clone()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._check(pl_module)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["moco", "byol"])
def test_method_ema_matches_a_hand_computed_ema_with_accumulation(
    compose_config, tiny, tmp_path, method
):
    expected = ExpectedTargets()
    cfg = compose_config(
        f"+method={method}",
        *tiny,
        "trainer.limit_train_batches=4",
        "trainer.accumulate_grad_batches=2",
    )
    assert train(cfg, tmp_path, callbacks=[expected])["steps"] == 2
    assert expected.checked == 5  # before each of the 4 micro-batches, and at the end


@pytest.mark.slow
def test_training_clock_logs_growing_training_time(compose_config, tiny, tmp_path):
    cfg = compose_config("+method=simclr", *tiny, "trainer.max_epochs=2")
    train(cfg, tmp_path)
    seconds = logged_values(read_metrics(tmp_path), "time/train_s")
    assert len(seconds) == 2 and 0 < seconds[0] < seconds[1]


@pytest.mark.slow
def test_reco_warmup_weights_are_logged(compose_config, tiny, tmp_path):
    """Warm-up over one epoch of 3 steps: effective weights 0, 1/3, 2/3 (epoch mean 1/3)."""
    cfg = compose_config(
        "+method=moco", "+reco=on", *tiny, "reco.warmup_epochs=1", "reco.w_local=0.5"
    )
    train(cfg, tmp_path)
    rows = read_metrics(tmp_path)
    assert logged_values(rows, "train/reco_w_global") == [pytest.approx(1 / 3)]
    assert logged_values(rows, "train/reco_w_local") == [pytest.approx(0.5 / 3)]


@pytest.mark.slow
def test_simsiam_with_reco_learns_on_the_digits(compose_config, tmp_path):
    """The fourth method, added as one file and one YAML, takes ReCo through the same seam
    and ends above its random initialisation on the bundled digits."""
    cfg = compose_config(
        "+method=simsiam",
        "+reco=on",
        "trainer.max_epochs=3",
        "method.proj_hidden_dim=512",
        "method.proj_output_dim=512",
        "method.pred_hidden_dim=128",
        "pictures=false",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
    )
    summary = train(cfg, tmp_path)
    assert summary["method"] == "simsiam"
    assert summary["knn_acc"] > summary["knn_acc_random_init"] + 0.02, summary


def test_term_gradient_shares_are_logged_per_epoch(compose_config, tiny, tmp_path):
    """``diagnostics.term_grad_steps=2``: each epoch's row holds the three terms' gradient
    norms and shares (the shares of a step add up to 1, and so do their epoch means)."""
    cfg = compose_config(
        "+method=moco", "+reco=on", *tiny, "reco.warmup_epochs=0", "diagnostics.term_grad_steps=2"
    )
    train(cfg, tmp_path)
    rows = read_metrics(tmp_path)
    shares = [
        logged_values(rows, f"train/grad_share_{name}") for name in ("method", "global", "local")
    ]
    assert all(len(values) == 1 for values in shares)
    assert sum(values[0] for values in shares) == pytest.approx(1.0, abs=1e-4)
    assert logged_values(rows, "train/grad_norm_method")[0] > 0
