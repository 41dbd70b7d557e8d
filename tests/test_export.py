"""``python -m reco_lightning.export``: the backbone out of the training checkpoint, in files
that load without this package and give the same features.

The default tests use checkpoints written here from a freshly built backbone (no training);
the slow ones train two tiny runs once for the module: MoCo + ReCo at width 8 with the
small stem (16 px digits), and SimCLR at width 64 with torchvision's stem (32 px), which
must load into plain ``torchvision.models.resnet18()`` in a process that never imports
reco_lightning.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torchvision
from hydra import compose, initialize_config_module

from reco_lightning.errors import ConfigError
from reco_lightning.export import (
    FORMATS,
    backbone_weights,
    check_format,
    export_backbone,
    knn_record,
    normalisation,
    output_path,
)
from reco_lightning.models import build_backbone
from reco_lightning.run.evaluate import load_backbone

from .conftest import TINY, run_module

#: features of the exported file and of the checkpoint's backbone must agree to this
TOLERANCE = 1e-6
#: the formats of each kind of backbone: timm's own replaces torchvision's
RESNET_FORMATS = {f for f in FORMATS if f != "timm"}
TIMM_FORMATS = {f for f in FORMATS if f != "torchvision"}
JSON_FIELDS = {
    "format",
    "file",
    "load",
    "architecture",
    "stem",
    "width",
    "feature_dim",
    "plain_torchvision",
    "torchvision",
    "input_size",
    "normalisation",
    "method",
    "reco",
    "epochs_trained",
    "global_step",
    "knn_acc",
    "knn_acc_from",
    "checkpoint",
    "exports",
}


def fake_run(root: Path, width: int, small_stem: bool, image_size: int | None = 32) -> Path:
    """A run directory whose ``checkpoints/last.ckpt`` holds a random backbone (BatchNorm
    statistics and scales perturbed, so that every tensor matters) among other weights."""
    torch.manual_seed(0)
    backbone, _ = build_backbone("resnet18", width, small_stem)
    with torch.no_grad():
        for module in backbone.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
    state_dict = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    state_dict["projector.0.weight"] = torch.zeros(4, 4)
    state = {
        "state_dict": state_dict,
        "hyper_parameters": {
            "backbone": "resnet18",
            "backbone_width": width,
            "small_stem": small_stem,
        },
        "epoch": 2,
        "global_step": 7,
    }
    (root / "checkpoints").mkdir(parents=True)
    torch.save(state, root / "checkpoints" / "last.ckpt")
    if image_size is not None:
        (root / "config.yaml").write_text(
            f"seed: 0\ndataset:\n  name: cifar10\n  image_size: {image_size}\n"
        )
    return root


def features(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(batch)


def batch_of(size: int, n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


# -- fast: width 64 is torchvision's ResNet, and the documented line loads it ---------------
@pytest.mark.parametrize("small_stem", [False, True], ids=["torchvision_stem", "small_stem"])
def test_width_64_loads_strict_into_plain_torchvision_with_the_documented_line(
    tmp_path, monkeypatch, small_stem
):
    run = fake_run(tmp_path / "run", 64, small_stem)
    info = export_backbone(run, "torchvision")
    folder = run / "export"
    assert (folder / "backbone.pth").is_file() and (folder / "backbone.json").is_file()
    assert info["plain_torchvision"] and info["stem"] == (
        "small 3x3, no max-pool" if small_stem else "torchvision"
    )
    assert "reco_lightning" not in info["load"] and "torchvision.models.resnet18()" in info["load"]
    # the saved keys are torchvision's resnet18 keys without fc
    saved = torch.load(folder / "backbone.pth", weights_only=True)
    plain = torchvision.models.resnet18()
    assert set(saved) == {k for k in plain.state_dict() if not k.startswith("fc.")}
    monkeypatch.chdir(folder)
    namespace: dict = {}
    exec(info["load"], namespace)  # load_state_dict is strict: any missing or extra key would raise
    model = namespace["m"]
    assert type(model) is torchvision.models.ResNet
    batch = batch_of(32)
    reference, _ = load_backbone(run / "checkpoints" / "last.ckpt")
    assert (features(model, batch) - features(reference, batch)).abs().max().item() <= TOLERANCE


# -- fast: bad input is one line, and nothing is written --------------------------------------
def test_unknown_format_is_one_line_with_a_suggestion():
    with pytest.raises(
        ConfigError, match=r"format=torchvison is not a format .*did you mean format=torchvision\?"
    ):
        check_format("torchvison")
    with pytest.raises(
        ConfigError, match="choose one of torchvision, timm, safetensors, torchscript"
    ):
        check_format("onnx")


def test_bad_checkpoints_and_formats_are_config_errors_and_write_nothing(tmp_path):
    run = fake_run(tmp_path / "run", 8, True)
    checkpoint = run / "checkpoints" / "last.ckpt"
    truncated = run / "checkpoints" / "cut.ckpt"
    truncated.write_bytes(checkpoint.read_bytes()[:5000])
    cases = [
        ((run, "onnx"), "format=onnx is not a format"),
        ((tmp_path / "nowhere", "torchvision"), "no checkpoint at"),
        ((truncated, "torchvision"), "not a readable checkpoint"),
        (
            (run, "timm"),
            (
                r"format=timm needs a backbone built from timm \(backbone.name=timm/...\); "
                r"this one is resnet18: use format=torchvision"
            ),
        ),
        (
            (run, "torchvision", tmp_path / "out" / "weights.bin"),
            r"output=.*weights.bin: format=torchvision writes a .pth file",
        ),
        ((run, "torchvision", None, "big"), "image_size=big is not a positive number"),
    ]
    for args, phrase in cases:
        with pytest.raises(ConfigError, match=phrase) as caught:
            export_backbone(*args)
        assert "\n" not in str(caught.value)
    assert not (run / "export").exists() and not (tmp_path / "out").exists()


def test_torchscript_without_a_known_image_size_asks_for_one(tmp_path):
    run = fake_run(tmp_path / "run", 8, True, image_size=None)
    with pytest.raises(ConfigError, match="set image_size="):
        export_backbone(run, "torchscript")
    assert not (run / "export").exists()
    info = export_backbone(run, "torchscript", image_size=16)
    assert info["input_size"] == [3, 16, 16] and info["normalisation"] is None


def test_safetensors_missing_names_the_extra(tmp_path, monkeypatch):
    run = fake_run(tmp_path / "run", 8, True)
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ConfigError, match=r'pip install "reco_lightning\[export\]"'):
        export_backbone(run, "safetensors")
    assert not (run / "export").exists()


def test_pieces():
    assert backbone_weights(
        {"state_dict": {"backbone.a": torch.ones(1), "target_backbone.a": torch.ones(1)}}
    ) == {"a": torch.ones(1)}
    with pytest.raises(ConfigError, match="no backbone"):
        backbone_weights({"state_dict": {"projector.a": torch.ones(1)}})
    assert output_path(None, Path("RUN"), "torchscript") == Path("RUN/export/backbone.pt")
    assert output_path("elsewhere", Path("RUN"), "torchvision") == Path("elsewhere/backbone.pth")
    assert output_path("w.safetensors", Path("RUN"), "safetensors") == Path("w.safetensors")
    assert normalisation({"name": "imagefolder"})["std"] == [0.229, 0.224, 0.225]
    assert normalisation(None) is None
    digits = normalisation({"name": "digits", "image_size": 16, "val_fraction": 0.2, "seed": 0})
    assert (
        len(set(digits["mean"])) == 1 and 0 < digits["mean"][0] < 1
    )  # gray: one value per channel
    assert set(FORMATS) == {"torchvision", "timm", "safetensors", "torchscript"}


def test_knn_accuracy_comes_from_the_summary_of_the_same_step_else_the_checkpoints_record(tmp_path):
    state = {
        "global_step": 7,
        "callbacks": {
            "ModelCheckpoint{'monitor': 'val/knn_acc'}": {
                "monitor": "val/knn_acc",
                "best_k_models": {"/elsewhere/checkpoints/best-x.ckpt": torch.tensor(0.25)},
            }
        },
    }
    (tmp_path / "summary.json").write_text(json.dumps({"steps": 7, "knn_acc": 0.5}))
    assert knn_record(tmp_path, Path("last.ckpt"), state) == (0.5, "summary.json")
    (tmp_path / "summary.json").write_text(
        json.dumps({"steps": 9, "knn_acc": 0.5})
    )  # later weights
    assert knn_record(tmp_path, Path("last.ckpt"), state) == (None, None)
    assert knn_record(tmp_path, Path("best-x.ckpt"), state)[0] == 0.25


@pytest.mark.slow  # a subprocess: 10-30 s on an AVX2 CPU
def test_export_command_on_a_truncated_checkpoint_is_one_line(tmp_path):
    run = fake_run(tmp_path / "run", 8, True)
    bad = run / "checkpoints" / "cut.ckpt"
    bad.write_bytes((run / "checkpoints" / "last.ckpt").read_bytes()[:5000])
    done = run_module(
        "reco_lightning.export", f"checkpoint={bad}", "format=safetensors", cwd=tmp_path
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    errors = [
        line
        for line in done.stderr.splitlines()
        if line.startswith("reco_lightning.export: error:")
    ]
    assert (
        len(errors) == 1 and str(bad) in errors[0] and "not a readable checkpoint" in errors[0]
    ), done.stderr
    assert not (run / "export").exists()


# -- slow: trained runs -----------------------------------------------------------------------
def _train(out_dir: Path, *overrides: str) -> Path:
    from reco_lightning.run.train import train

    keys = {o.split("=", 1)[0] for o in overrides}
    tiny = [o for o in TINY if o.split("=", 1)[0] not in keys]
    with initialize_config_module(config_module="reco_lightning.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*tiny, *overrides])
    train(cfg, out_dir)
    return out_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``narrow``: MoCo + ReCo, width 8, small stem, 16 px; ``plain``: SimCLR, width 64,
    torchvision's stem, 32 px; ``timm``: MoCo + ReCo on timm's MobileNetV3-small-0.5, 16 px
    (one epoch of 3 steps each)."""
    root = tmp_path_factory.mktemp("export")
    return {
        "narrow": _train(root / "narrow", "+method=moco", "+reco=on"),
        "plain": _train(
            root / "plain",
            "+method=simclr",
            "backbone.width=64",
            "backbone.small_stem=false",
            "dataset.image_size=32",
        ),
        "timm": _train(
            root / "timm", "+method=moco", "+reco=on", "backbone.name=timm/mobilenetv3_small_050"
        ),
    }


@pytest.fixture(scope="module")
def exported(runs) -> dict[str, dict[str, dict]]:
    """Every format of every run exported into the run's ``export/`` folder."""
    return {
        name: {
            fmt: export_backbone(run, fmt)
            for fmt in FORMATS
            if fmt in (TIMM_FORMATS if name == "timm" else RESNET_FORMATS)
        }
        for name, run in runs.items()
    }


SIZES = {"narrow": 16, "plain": 32, "timm": 16}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["narrow", "plain"])
def test_state_dict_formats_give_the_checkpoints_features(runs, exported, name):
    import safetensors.torch

    run = runs[name]
    reference, hparams = load_backbone(run / "checkpoints" / "last.ckpt")
    batch = batch_of(SIZES[name])
    expected = features(reference, batch)
    loaded = {
        "torchvision": torch.load(run / "export" / "backbone.pth", weights_only=True),
        "safetensors": safetensors.torch.load_file(run / "export" / "backbone.safetensors"),
    }
    for fmt, weights in loaded.items():
        model, _ = build_backbone(
            hparams["backbone"], hparams["backbone_width"], hparams["small_stem"]
        )
        model.load_state_dict(weights, strict=True)
        difference = (features(model, batch) - expected).abs().max().item()
        print(f"{name} {fmt}: max |difference| {difference:.3g}")
        assert difference <= TOLERANCE, (fmt, difference)


#: run in a fresh interpreter inside the export folder: every documented loading line that
#: needs no reco_lightning, on the batch the test saved; prints the largest differences
LOADER = textwrap.dedent(
    """
    import json, sys
    import torch
    info = json.load(open("backbone.json"))
    batch, expected = torch.load("batch.pt"), torch.load("expected.pt")
    result = {}
    for fmt, entry in info["exports"].items():
        if "reco_lightning" in entry["load"]:
            continue
        namespace = {}
        exec(entry["load"], namespace)
        with torch.no_grad():
            result[fmt] = (namespace["m"](batch) - expected).abs().max().item()
    result["reco_lightning_imported"] = "reco_lightning" in sys.modules
    print(json.dumps(result))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, plain_formats",
    [("narrow", {"torchscript"}), ("plain", RESNET_FORMATS), ("timm", TIMM_FORMATS)],
)
def test_exports_load_in_a_process_without_reco_lightning(runs, exported, name, plain_formats):
    run = runs[name]
    folder = run / "export"
    reference, _ = load_backbone(run / "checkpoints" / "last.ckpt")
    batch = batch_of(SIZES[name])
    torch.save(batch, folder / "batch.pt")
    torch.save(features(reference, batch), folder / "expected.pt")
    done = subprocess.run(
        [sys.executable, "-c", LOADER], cwd=folder, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{name}, in a process without reco_lightning: {result}")
    assert result.pop("reco_lightning_imported") is False
    assert set(result) == plain_formats
    assert all(difference <= TOLERANCE for difference in result.values()), result


@pytest.mark.slow
def test_backbone_json_describes_the_run(runs, exported):
    narrow = json.loads((runs["narrow"] / "export" / "backbone.json").read_text())
    plain = json.loads((runs["plain"] / "export" / "backbone.json").read_text())
    summary = json.loads((runs["narrow"] / "summary.json").read_text())
    for info in (narrow, plain):
        assert JSON_FIELDS <= set(info)
        assert (
            set(info["exports"]) == RESNET_FORMATS
        )  # all three formats, one folder, one description
        assert (
            info["format"] == "torchscript" and info["file"] == "backbone.pt"
        )  # the last one exported
        assert info["global_step"] == 3 and info["epochs_trained"] == 1
        assert (
            info["normalisation"]["dataset"] == "digits" and len(info["normalisation"]["std"]) == 3
        )
    assert {
        k: narrow[k]
        for k in ("architecture", "stem", "width", "feature_dim", "input_size", "method", "reco")
    } == {
        "architecture": "resnet18",
        "stem": "small 3x3, no max-pool",
        "width": 8,
        "feature_dim": 64,
        "input_size": [3, 16, 16],
        "method": "moco",
        "reco": True,
    }
    assert (narrow["knn_acc"], narrow["knn_acc_from"]) == (summary["knn_acc"], "summary.json")
    assert not narrow["plain_torchvision"] and "format=torchscript" in narrow["torchvision"]
    assert {
        k: plain[k]
        for k in (
            "stem",
            "width",
            "feature_dim",
            "input_size",
            "method",
            "reco",
            "plain_torchvision",
        )
    } == {
        "stem": "torchvision",
        "width": 64,
        "feature_dim": 512,
        "input_size": [3, 32, 32],
        "method": "simclr",
        "reco": False,
        "plain_torchvision": True,
    }
    assert exported["plain"]["torchvision"]["load"] == (
        "import torch, torchvision; m = torchvision.models.resnet18(); m.fc = torch.nn.Identity(); "
        'm.load_state_dict(torch.load("backbone.pth")); m.eval()'
    )


@pytest.mark.slow
def test_export_command_help_and_default_output(runs, exported, tmp_path):
    done = run_module("reco_lightning.export", "--help", cwd=tmp_path)
    assert done.returncode == 0 and "format: torchvision" in done.stdout, done.stderr[-3000:]
    done = run_module(
        "reco_lightning.export",
        f"checkpoint={runs['narrow']}",
        "format=safetensors",
        f"output={tmp_path / 'out'}",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "out" / "backbone.safetensors").is_file() and "load it with" in done.stdout
    description = json.loads((tmp_path / "out" / "backbone.json").read_text())
    assert set(description["exports"]) == {"safetensors"}


@pytest.mark.slow
def test_a_timm_backbone_exports_as_timm_not_torchvision(runs, exported):
    """One epoch of MoCo + ReCo on a timm model; its export says how timm builds it."""
    info = exported["timm"]["timm"]
    assert info["architecture"] == "timm/mobilenetv3_small_050" and info["stem"] == "timm"
    assert info["load"] == (
        'import timm, torch; m = timm.create_model("mobilenetv3_small_050", num_classes=0); '
        'm.load_state_dict(torch.load("backbone.pth")); m.eval()'
    )
    assert info["feature_dim"] == 1024 and info["reco"] is True
    with pytest.raises(ConfigError, match=r"came from timm .* use format=timm"):
        export_backbone(runs["timm"], "torchvision")
