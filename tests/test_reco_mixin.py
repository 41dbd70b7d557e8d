"""ReCoMixin on a tiny user LightningModule: gradients, queues, composition and config checks."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reco_lightning.errors import ConfigError
from reco_lightning.reco import ReCoConfig, ReCoMixin, mixin as mixin_module
from reco_lightning.losses.relation import global_relation_loss, interpolation_target, local_interpolation_loss
from reco_lightning.reco.mixing import mix_views
from reco_lightning.reco.queue import FeatureQueue

B, C, S, DIM = 4, 3, 8, 8
CONFIG = {"bank_size": 16, "negatives_size": 16}


@pytest.fixture(autouse=True)
def _quiet():
    # self.log without a Trainer only warns
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class Tiny(ReCoMixin, L.LightningModule):
    """A user module: linear online encoder and a separate target encoder.

    The target encoder is "frozen" only in that nothing trains it: its parameters keep
    ``requires_grad=True`` and ``target_embedding`` has no ``no_grad`` of its own, so the
    tests below check that the mixin itself keeps gradients out of the target branch.
    """

    def __init__(self, reco=CONFIG, negatives: FeatureQueue | None = None, temperature: float = 0.2) -> None:
        super().__init__()
        self.online = nn.Sequential(nn.Flatten(), nn.Linear(C * S * S, DIM))
        self.target = nn.Sequential(nn.Flatten(), nn.Linear(C * S * S, DIM))
        if negatives is not None:
            self.keys = negatives  # the module's own queue, lent to the mixin
        self.setup_reco(reco, DIM, temperature=temperature, negatives=negatives)

    def online_embedding(self, images):
        return F.normalize(self.online(images), dim=1)

    def target_embedding(self, images):
        return F.normalize(self.target(images), dim=1)


def _batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, C, S, S, generator=generator) for _ in range(3))  # v1, v2, w


def _fill(queue: FeatureQueue, seed: int = 100) -> None:
    """Write a whole queue with random unit keys (unwritten rows are left out of the terms)."""
    generator = torch.Generator().manual_seed(seed)
    queue.enqueue(F.normalize(torch.randn(queue.size, queue.features.shape[1], generator=generator), dim=1))


def _tiny(reco=CONFIG, seed: int = 0, fill: bool = True, **kwargs) -> Tiny:
    """A Tiny module; with ``fill`` its queues are fully written, so both terms are computed."""
    torch.manual_seed(seed)
    model = Tiny(reco, **kwargs)
    if fill and model.reco_enabled:
        _fill(model.relation_bank, seed + 100)
        if model._reco_owns_negatives:
            _fill(model.reco_negatives, seed + 200)
    return model


def _queue_state(model):
    return [
        (q.features.clone(), int(q.pointer), int(q.num_enqueued))
        for q in (model.relation_bank, model.reco_negatives)
    ]


def _assert_same_queues(a, b):
    for (fa, pa, na), (fb, pb, nb) in zip(a, b):
        assert torch.equal(fa, fb) and pa == pb and na == nb


# --------------------------------------------------------------------------- (a), (b) gradients
def test_weighted_gradient_reaches_online_not_target_nor_queues():
    model = _tiny()
    v1, v2, w = _batch()
    terms = model.reco_loss(v1, v2, w)
    assert torch.isfinite(terms.weighted)
    terms.weighted.backward()
    for p in model.online.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    for p in model.target.parameters():
        assert p.requires_grad  # so only the mixin can be what keeps the gradient out
        assert p.grad is None
    for q in (model.relation_bank, model.reco_negatives):
        assert not q.features.requires_grad and q.features.grad is None


def test_explicit_k2_with_grad_is_detached():
    model = _tiny()
    v1, v2, w = _batch()
    k2 = model.target_embedding(v2)  # carries a graph into the target encoder
    assert k2.requires_grad
    model.reco_loss(v1, v2, w, k2=k2).weighted.backward()
    for p in model.target.parameters():
        assert p.grad is None
    assert model.online[1].weight.grad is not None


@pytest.mark.parametrize("term", ["global_", "local"])
def test_each_term_has_gradient_into_online(term):
    model = _tiny()
    v1, v2, w = _batch()
    terms = model.reco_loss(v1, v2, w)
    getattr(terms, term).backward()
    weight = model.online[1].weight
    assert weight.grad is not None and weight.grad.abs().sum() > 0
    assert model.target[1].weight.grad is None


def test_weights_combine_the_terms():
    v1, v2, w = _batch()
    for w_global, w_local in [(1.0, 1.0), (2.0, 0.5), (0.3, 4.0)]:
        model = _tiny({**CONFIG, "w_global": w_global, "w_local": w_local})
        torch.manual_seed(1)
        terms = model.reco_loss(v1, v2, w)
        assert terms.global_.item() > 0 and terms.local.item() > 0
        expected = w_global * terms.global_ + w_local * terms.local
        assert torch.allclose(terms.weighted, expected)


@pytest.mark.parametrize("zero, kept", [("w_global", "local"), ("w_local", "global_")])
def test_a_zero_weight_skips_its_term(zero, kept, monkeypatch):
    """A term with weight 0 is not computed at all (no mixed forward pass for w_local=0)."""
    calls = []
    monkeypatch.setattr(mixin_module, "mix_views", lambda *a: calls.append(a) or mix_views(*a))
    model = _tiny({**CONFIG, zero: 0.0})
    torch.manual_seed(1)
    terms = model.reco_loss(*_batch())
    skipped = "global_" if kept == "local" else "local"
    assert getattr(terms, skipped) is None
    assert terms.weighted.item() == pytest.approx(getattr(terms, kept).item())
    assert len(calls) == (0 if zero == "w_local" else 1)


# --------------------------------------------------------------------------- composition
def test_terms_follow_reco_definitions():
    model = _tiny({**CONFIG, "tau_student": 0.3, "tau_teacher": 0.05})
    v1, v2, w = _batch()
    bank = model.relation_bank.features.clone()
    negatives = model.reco_negatives.features.clone()
    torch.manual_seed(7)
    terms = model.reco_loss(v1, v2, w)

    with torch.no_grad():
        q1 = model.online_embedding(v1)
        k2 = model.target_embedding(v2)
        weak = model.target_embedding(w)
        torch.manual_seed(7)  # mixing is the only random draw in reco_loss
        mixed = mix_views(v1, v2, "cutmix", 1.0)
        expected_global = global_relation_loss(q1, weak, bank, 0.3, 0.05)
        target = interpolation_target(q1, k2[mixed.permutation], mixed.lam)
        expected_local = local_interpolation_loss(model.online_embedding(mixed.images), target, negatives, 0.2)
    assert terms.global_.item() == pytest.approx(expected_global.item(), rel=1e-5)
    assert terms.local.item() == pytest.approx(expected_local.item(), rel=1e-5)


def test_tau_local_defaults_to_method_temperature_and_can_be_overridden():
    assert _tiny(temperature=0.3).reco_tau_local == 0.3
    assert _tiny({**CONFIG, "tau_local": 0.7}, temperature=0.3).reco_tau_local == 0.7


def test_mixup_mode_is_used(monkeypatch):
    seen = []
    original = mixin_module.mix_views

    def spy(first, second, mode, alpha):
        seen.append((mode, alpha))
        return original(first, second, mode, alpha)

    monkeypatch.setattr(mixin_module, "mix_views", spy)
    model = _tiny({**CONFIG, "mix": "mixup", "alpha": 0.5})
    model.reco_loss(*_batch())
    assert seen == [("mixup", 0.5)]


# --------------------------------------------------------------------------- (c), (d) queues
def test_reco_loss_leaves_queues_and_batch_end_fills_them():
    model = _tiny(fill=False)
    v1, v2, w = _batch()
    before = _queue_state(model)
    model.reco_loss(v1, v2, w)
    _assert_same_queues(_queue_state(model), before)

    model.on_train_batch_end(None, None, 0)
    with torch.no_grad():
        weak_keys = model.target_embedding(w)
        k2 = model.target_embedding(v2)
    assert torch.allclose(model.relation_bank.features[:B], weak_keys, atol=1e-6)
    assert torch.allclose(model.reco_negatives.features[:B], k2, atol=1e-6)
    assert torch.equal(model.relation_bank.features[B:], before[0][0][B:])
    assert torch.equal(model.reco_negatives.features[B:], before[1][0][B:])
    assert int(model.relation_bank.pointer) == B and int(model.reco_negatives.pointer) == B

    # the keys are enqueued once: a second hook call without a new step adds nothing
    model.on_train_batch_end(None, None, 1)
    assert int(model.relation_bank.num_enqueued) == B and int(model.reco_negatives.num_enqueued) == B


def test_bank_never_scores_the_current_batch(monkeypatch):
    scored_banks = []
    original = mixin_module.global_relation_loss

    def spy(student, teacher, bank, tau_s, tau_t):
        scored_banks.append(bank.detach().clone())
        return original(student, teacher, bank, tau_s, tau_t)

    monkeypatch.setattr(mixin_module, "global_relation_loss", spy)
    model = _tiny()
    first, second = _batch(0), _batch(1)
    with torch.no_grad():
        weak1 = model.target_embedding(first[2])
        weak2 = model.target_embedding(second[2])
    bank_at_start = model.relation_bank.features.clone()

    def contains(bank, keys):
        return bool((torch.cdist(keys, bank) < 1e-5).any())

    model.reco_loss(*first)
    assert torch.equal(scored_banks[0], bank_at_start)
    assert not contains(scored_banks[0], weak1)
    model.on_train_batch_end(None, None, 0)

    model.reco_loss(*second)
    # the previous step's keys are in the bank now, this step's are not
    assert contains(scored_banks[1], weak1)
    assert not contains(scored_banks[1], weak2)


# --------------------------------------------------------------------------- (e) explicit q1/k2
def test_explicit_q1_k2_give_same_terms():
    model = _tiny()
    v1, v2, w = _batch()
    torch.manual_seed(3)
    implicit = model.reco_loss(v1, v2, w)
    q1 = model.online_embedding(v1)
    k2 = model.target_embedding(v2).detach()
    torch.manual_seed(3)
    explicit = model.reco_loss(v1, v2, w, q1=q1, k2=k2)
    assert explicit.global_.item() == pytest.approx(implicit.global_.item(), rel=1e-6)
    assert explicit.local.item() == pytest.approx(implicit.local.item(), rel=1e-6)
    assert explicit.weighted.item() == pytest.approx(implicit.weighted.item(), rel=1e-6)
    # a different seed gives a different mix, so the comparison above is not vacuous
    torch.manual_seed(4)
    other = model.reco_loss(v1, v2, w, q1=q1, k2=k2)
    assert other.local.item() != pytest.approx(implicit.local.item(), rel=1e-6)


# --------------------------------------------------------------------------- (f) off
@pytest.mark.parametrize("reco", [None, {"enabled": False}, {"enabled": False, "bank_size": 8}])
def test_reco_off_creates_nothing(reco):
    model = _tiny(reco)
    assert model.reco_enabled is False
    state = model.state_dict()
    assert not any(name.startswith(("relation_bank", "reco_negatives")) for name in state)
    assert not hasattr(model, "relation_bank")
    with pytest.raises(RuntimeError, match="setup_reco"):
        model.reco_loss(*_batch())
    model.on_train_batch_end(None, None, 0)  # a no-op, not an error


def test_reco_on_registers_queues_in_state_dict():
    model = _tiny()
    assert model.reco_enabled
    state = model.state_dict()
    assert "relation_bank.features" in state and "reco_negatives.features" in state
    assert state["relation_bank.features"].shape == (16, DIM)
    assert model.reco_config == ReCoConfig(bank_size=16, negatives_size=16)


def test_setup_reco_accepts_config_object():
    model = _tiny(ReCoConfig(bank_size=8, negatives_size=12))
    assert model.relation_bank.size == 8 and model.reco_negatives.size == 12


def test_setup_reco_accepts_any_mapping():
    """A Hydra user passes ``cfg.reco``: an OmegaConf DictConfig, a Mapping but not a dict.

    It must be validated and turned into a ReCoConfig like a dict is (this package is
    configured with Hydra, so this is the natural way to call setup_reco).
    """
    from omegaconf import OmegaConf

    model = _tiny(OmegaConf.create(CONFIG))
    assert isinstance(model.reco_config, ReCoConfig)
    assert model.relation_bank.size == 16
    with pytest.raises(ConfigError, match=r"reco\.tau_teacher"):
        _tiny(OmegaConf.create({**CONFIG, "tau_teacher": 0}))


# --------------------------------------------------------------------------- (g) config checks
@pytest.mark.parametrize(
    "settings, setting",
    [
        ({"tau_teacher": 0}, "reco.tau_teacher"),
        ({"tau_student": -0.1}, "reco.tau_student"),
        ({"alpha": 0}, "reco.alpha"),
        ({"tau_local": 0}, "reco.tau_local"),
        ({"w_global": -1}, "reco.w_global"),
        ({"w_local": -0.5}, "reco.w_local"),
        ({"mix": "foo"}, "reco.mix"),
        ({"bank_size": 0}, "reco.bank_size"),
        ({"negatives_size": -4}, "reco.negatives_size"),
    ],
)
def test_config_validation_names_setting(settings, setting):
    with pytest.raises(ConfigError, match=setting.replace(".", r"\.")):
        ReCoConfig(**settings)
    with pytest.raises(ConfigError, match=setting.replace(".", r"\.")):
        ReCoConfig.from_mapping(settings)


def test_unknown_setting_named():
    with pytest.raises(ConfigError, match="w_globl") as info:
        ReCoConfig.from_mapping({"w_globl": 1})
    assert "reco" in str(info.value)
    with pytest.raises(ConfigError, match="w_globl"):
        Tiny({"w_globl": 1})


def test_from_mapping_defaults_and_off():
    assert ReCoConfig.from_mapping(None) is None
    assert ReCoConfig.from_mapping({"enabled": False}) is None
    config = ReCoConfig.from_mapping({"enabled": True})
    assert config == ReCoConfig()
    assert (config.w_global, config.w_local, config.tau_student, config.tau_teacher) == (1.0, 1.0, 0.1, 0.04)
    assert (config.alpha, config.mix, config.tau_local) == (1.0, "cutmix", None)


# --------------------------------------------------------------------------- (h) borrowed queue
def test_borrowed_negatives_not_duplicated_and_not_filled_by_mixin():
    torch.manual_seed(0)
    own = FeatureQueue(16, DIM, name="method.queue_size")
    _fill(own)
    model = _tiny(CONFIG, negatives=own)
    assert model.reco_negatives is own
    state = model.state_dict()
    assert "keys.features" in state
    assert not any(name.startswith("reco_negatives") for name in state)
    assert sum(1 for name in state if name.endswith(".features")) == 2  # keys + relation bank

    before = own.features.clone()
    v1, v2, w = _batch()
    terms = model.reco_loss(v1, v2, w)
    terms.weighted.backward()
    model.on_train_batch_end(None, None, 0)
    assert torch.equal(own.features, before)
    assert int(own.pointer) == 0 and int(own.num_enqueued) == 16  # as _fill left it
    assert int(model.relation_bank.num_enqueued) == 16 + B  # the bank is still the mixin's to fill


def test_borrowed_negatives_are_the_ones_scored(monkeypatch):
    scored = []
    original = mixin_module.local_interpolation_loss

    def spy(mixed, target, negatives, *args):
        scored.append(negatives)
        return original(mixed, target, negatives, *args)

    monkeypatch.setattr(mixin_module, "local_interpolation_loss", spy)
    own = FeatureQueue(16, DIM)
    _fill(own)
    model = _tiny(CONFIG, negatives=own)
    model.reco_loss(*_batch())
    assert scored[0].data_ptr() == own.features.data_ptr() and scored[0].shape == own.features.shape


def test_wrong_base_order_is_refused_with_the_fix():
    """LightningModule before ReCoMixin would skip the mixin's on_train_batch_end."""
    class Backwards(L.LightningModule, ReCoMixin):
        def __init__(self):
            super().__init__()
            self.setup_reco({}, 4)

    with pytest.raises(TypeError, match=r"class Backwards\(ReCoMixin, LightningModule\)"):
        Backwards()
