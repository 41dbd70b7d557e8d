"""Config composition through Hydra's compose API, and the checks that run before training."""

from __future__ import annotations

import inspect

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from reco_lightning.errors import ConfigError
from reco_lightning.methods import METHODS, SSLMethod
from reco_lightning.reco import ReCoConfig
from reco_lightning.run.schema import method_arguments, reject_added_keys
from reco_lightning.run.train import reco_settings, require_method

DATASETS = ["digits", "cifar10", "cifar100", "stl10", "imagefolder"]


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("method", sorted(METHODS))  # the registry: every method
@pytest.mark.parametrize("reco", ["on", "off"])
def test_every_method_dataset_combination_composes(compose_config, method, dataset, reco):
    overrides = [f"+method={method}", f"dataset={dataset}", f"+reco={reco}"]
    if dataset == "imagefolder":
        overrides.append("dataset.root=/some/folder")
    cfg = compose_config(*overrides)
    assert cfg.method.name == method
    assert cfg.dataset.name == dataset
    assert require_method(cfg) == method
    resolved = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert resolved["reco"]["enabled"] is (reco == "on")
    if reco == "on":
        assert resolved["reco"]["bank_size"] == resolved["dataset"]["queue_size"]


def test_method_presets_set_their_own_optimizer_and_the_command_line_wins(compose_config):
    assert compose_config("+method=simclr").optimizer.lr == 0.4
    assert compose_config("+method=byol").optimizer.name == "lars"  # config.yaml says sgd
    assert compose_config("+method=moco", "optimizer.name=sgd").optimizer.name == "sgd"
    # a dataset preset adjusts generic settings, but never a method's own
    cfg = compose_config("+method=moco", "dataset=digits")
    assert cfg.backbone.width == 16 and cfg.method.temperature == 0.2


def test_reco_defaults_follow_reco_md(compose_config):
    from reco_lightning.methods import METHODS

    reco = compose_config("+method=moco", "+reco=on").reco
    assert (reco.w_global, reco.w_local) == (None, None)  # null: the method's weights
    assert {name: cls.reco_weights for name, cls in METHODS.items()} == {
        name: (1.0, 1.0) for name in METHODS
    }
    assert (reco.tau_student, reco.tau_teacher, reco.alpha, reco.mix) == (0.1, 0.04, 1.0, "auto")


def test_reco_off_and_absent_mean_the_same_run(compose_config):
    assert reco_settings(compose_config("+method=moco")) is None
    assert reco_settings(compose_config("+method=moco", "+reco=off")) is None
    assert reco_settings(compose_config("+method=moco", "+reco=on")).tau_student == 0.1


def test_missing_method_lists_the_choices(compose_config):
    cfg = compose_config()
    choices = ", ".join(rf"\+method={name}" for name in METHODS)  # every registered method
    with pytest.raises(ConfigError, match=choices):
        require_method(cfg)


def test_unknown_method_is_a_hydra_error_listing_options(compose_config):
    with pytest.raises(ConfigCompositionException, match="method/mocco"):
        compose_config("+method=mocco")


def test_misspelt_key_is_rejected_by_struct_mode(compose_config):
    with pytest.raises(ConfigCompositionException, match="max_epoch"):
        compose_config("+method=moco", "trainer.max_epoch=3")


@pytest.mark.parametrize(
    ("added", "hint"),
    [
        ("+trainer.max_epoch=3", "did you mean trainer.max_epochs"),
        ("+method.tempreature=0.5", "did you mean method.temperature"),
        ("+knn.kk=3", "did you mean knn.k"),
        ("+reco.w_globl=2", "did you mean reco.w_global"),
        ("+dataset.batchsize=8", "did you mean dataset.batch_size"),
    ],
)
def test_a_key_added_with_plus_that_the_schema_lacks_gets_a_suggestion(compose_config, added, hint):
    cfg = compose_config("+method=moco", "+reco=on", added)  # Hydra's + adds it past struct mode
    with pytest.raises(ConfigError, match=hint):
        reject_added_keys(cfg)
    reject_added_keys(compose_config("+method=moco", "+reco=on"))  # the presets themselves pass


def test_the_schema_types_the_values(compose_config):
    with pytest.raises(ConfigCompositionException, match="knn.k=abc"):
        compose_config("+method=moco", "knn.k=abc")
    with pytest.raises(ConfigCompositionException, match="method.queue_size=many"):
        compose_config("+method=moco", "method.queue_size=many")
    assert compose_config("+method=moco", "optimizer.lr=1").optimizer.lr == 1.0  # an int is a float


@pytest.mark.parametrize("method", ["moco", "simclr", "byol", "simsiam"])
def test_the_schema_feeds_every_shared_method_argument(compose_config, method):
    """A method is built from the schema's fields alone: a new SSLMethod argument without a
    config key, or a key that feeds no argument, fails here."""
    shared = set(inspect.signature(SSLMethod).parameters) - {"self", "num_classes", "reco"}
    assert set(method_arguments(compose_config(f"+method={method}"))) == shared


def test_presets_state_only_what_differs_from_the_constructors(compose_config):
    from reco_lightning.methods import MoCo

    cfg = compose_config("+method=moco", "+reco=on")
    defaults = {
        k: p.default for k, p in inspect.signature(MoCo).parameters.items() if k != "kwargs"
    }
    assert {k: cfg.method[k] for k in defaults if k != "queue_size"} == {
        k: v for k, v in defaults.items() if k != "queue_size"
    }
    assert cfg.reco.tau_teacher == ReCoConfig().tau_teacher


def test_invalid_reco_value_names_the_setting(compose_config):
    cfg = compose_config("+method=moco", "+reco=on", "reco.tau_teacher=0")
    with pytest.raises(ConfigError, match="reco.tau_teacher"):
        reco_settings(cfg)


def test_slurm_launcher_config_composes_with_the_plugin(compose_config):
    pytest.importorskip(
        "hydra_plugins.hydra_submitit_launcher",
        reason="the optional [slurm] extra is not installed",
    )
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="reco_lightning.conf", version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[
                "hydra/launcher=slurm",
                "+method=moco",
                "strategy=ddp",
                "trainer.devices=4",
                "trainer.num_nodes=2",
            ],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (4, 4, 2)


@pytest.mark.parametrize(
    "override, message",
    [
        ("reco.w_global=nan", "reco.w_global=nan must be a finite number >= 0"),
        ("reco.tau_student=inf", "reco.tau_student=inf must be a finite number > 0"),
        ("optimizer.weight_decay=-1e-4", "optimizer.weight_decay=-0.0001 must be"),
        ("optimizer.warmup_epochs=-1", "optimizer.warmup_epochs=-1.0 must be"),
        ("optimizer.lr=-0.1", r"optimizer.lr=-0.1 must be"),  # as given, not scaled
        ("seed=-1", r"seed=-1 must be a finite number in \[0, 4294967295\]"),
        ("dataset.batch_size=1", "dataset.batch_size=1 must be .* >= 2: a method compares"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0 must be"),
        ("trainer.limit_train_batches=0", "trainer.limit_train_batches=0 trains nothing"),
    ],
)
def test_every_numeric_setting_is_finite_and_in_its_declared_range(
    compose_config, override, message
):
    from reco_lightning.run.schema import check_ranges

    cfg = compose_config("+method=moco", "+reco=on", override)
    with pytest.raises(ConfigError, match=message):
        check_ranges(cfg)


def test_the_shipped_presets_are_in_range(compose_config):
    from reco_lightning.run.schema import check_ranges

    for method in sorted(METHODS):
        check_ranges(compose_config(f"+method={method}", "+reco=on"))


def test_a_value_outside_ascii_must_be_quoted_for_hydra():
    from reco_lightning.run.cli_checks import check_quoting

    with pytest.raises(ConfigError, match="""write 'dataset.root="bilder_äöü"'"""):
        check_quoting(["+method=moco", "dataset.root=bilder_äöü"])
    check_quoting(["dataset.root='bilder_äöü'", 'dataset.root="bilder_äöü"', "seed=1"])
