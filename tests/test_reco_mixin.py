"""ReCoMixin and the ReCo module on a tiny user LightningModule: gradients, queues,
composition and config checks."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from reco_lightning.errors import ConfigError
from reco_lightning.losses.relation import (
    global_relation_loss,
    interpolation_target,
    local_interpolation_loss,
)
from reco_lightning.models.queue import FeatureQueue
from reco_lightning.reco import ReCo, ReCoConfig, ReCoMixin
from reco_lightning.reco import module as reco_module
from reco_lightning.reco.mixing import mix_views

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
    tests below check that ReCo itself keeps gradients out of the target branch. With a
    queue of its own (``negatives``) it lends ReCo that queue's written rows.
    """

    def __init__(
        self, reco=CONFIG, negatives: FeatureQueue | None = None, temperature: float = 0.2
    ) -> None:
        super().__init__()
        self.online = nn.Sequential(nn.Flatten(), nn.Linear(C * S * S, DIM))
        self.target = nn.Sequential(nn.Flatten(), nn.Linear(C * S * S, DIM))
        self.keys = negatives
        settings = ReCoConfig.from_mapping(reco)
        self.reco = (
            None
            if settings is None
            else ReCo(
                settings,
                DIM,
                self,
                temperature=temperature,
                borrows_negatives=negatives is not None,
            )
        )

    def online_embedding(self, images):
        return F.normalize(self.online(images), dim=1)

    def target_embedding(self, images):
        return F.normalize(self.target(images), dim=1)

    def terms(self, v1, v2, w, **kwargs):
        """One ReCo call, returning all it computed (``reco_loss`` returns the sum only)."""
        if self.keys is not None and "negatives" not in kwargs:
            kwargs["negatives"] = self.keys.filled().clone()
        return self.reco(self, v1, v2, w, **kwargs)


def _batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, C, S, S, generator=generator) for _ in range(3))  # v1, v2, w


def _fill(queue: FeatureQueue, seed: int = 100) -> None:
    """Write a whole queue with random unit keys (unwritten rows are left out of the terms)."""
    generator = torch.Generator().manual_seed(seed)
    queue.enqueue(
        F.normalize(torch.randn(queue.size, queue.features.shape[1], generator=generator), dim=1)
    )


def _tiny(reco=CONFIG, seed: int = 0, fill: bool = True, **kwargs) -> Tiny:
    """A Tiny module; with ``fill`` its queues are fully written, so both terms are computed."""
    torch.manual_seed(seed)
    model = Tiny(reco, **kwargs)
    if fill and model.reco is not None:
        _fill(model.reco.bank, seed + 100)
        if model.reco.negatives is not None:
            _fill(model.reco.negatives, seed + 200)
    return model


# --------------------------------------------------------------------------- (a), (b) gradients
def test_weighted_gradient_reaches_online_not_target_nor_queues():
    model = _tiny()
    v1, v2, w = _batch()
    terms = model.terms(v1, v2, w)
    assert torch.isfinite(terms.weighted)
    terms.weighted.backward()
    for p in model.online.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    for p in model.target.parameters():
        assert p.requires_grad  # so only the mixin can be what keeps the gradient out
        assert p.grad is None
    for q in (model.reco.bank, model.reco.negatives):
        assert not q.features.requires_grad and q.features.grad is None


def test_explicit_k2_with_grad_is_detached():
    model = _tiny()
    v1, v2, w = _batch()
    k2 = model.target_embedding(v2)  # carries a graph into the target encoder
    assert k2.requires_grad
    model.terms(v1, v2, w, k2=k2).weighted.backward()
    for p in model.target.parameters():
        assert p.grad is None
    assert model.online[1].weight.grad is not None


@pytest.mark.parametrize("term", ["global_", "local"])
def test_each_term_has_gradient_into_online(term):
    model = _tiny()
    v1, v2, w = _batch()
    terms = model.terms(v1, v2, w)
    getattr(terms, term).backward()
    weight = model.online[1].weight
    assert weight.grad is not None and weight.grad.abs().sum() > 0
    assert model.target[1].weight.grad is None


def test_weights_combine_the_terms():
    v1, v2, w = _batch()
    for w_global, w_local in [(1.0, 1.0), (2.0, 0.5), (0.3, 4.0)]:
        model = _tiny({**CONFIG, "w_global": w_global, "w_local": w_local})
        torch.manual_seed(1)
        terms = model.terms(v1, v2, w)
        assert terms.global_.item() > 0 and terms.local.item() > 0
        expected = w_global * terms.global_ + w_local * terms.local
        assert torch.allclose(terms.weighted, expected)


@pytest.mark.parametrize("zero, kept", [("w_global", "local"), ("w_local", "global_")])
def test_a_zero_weight_skips_its_term(zero, kept, monkeypatch):
    """A term with weight 0 is not computed at all (no mixed forward pass for w_local=0)."""
    calls = []
    monkeypatch.setattr(reco_module, "mix_views", lambda *a: calls.append(a) or mix_views(*a))
    model = _tiny({**CONFIG, zero: 0.0})
    torch.manual_seed(1)
    terms = model.terms(*_batch())
    skipped = "global_" if kept == "local" else "local"
    assert getattr(terms, skipped) is None
    assert terms.weighted.item() == pytest.approx(getattr(terms, kept).item())
    assert len(calls) == (0 if zero == "w_local" else 1)


# --------------------------------------------------------------------------- composition
def test_terms_follow_reco_definitions():
    model = _tiny({**CONFIG, "tau_student": 0.3, "tau_teacher": 0.05})
    v1, v2, w = _batch()
    bank = model.reco.bank.features.clone()
    negatives = model.reco.negatives.features.clone()
    torch.manual_seed(7)
    terms = model.terms(v1, v2, w)

    with torch.no_grad():
        q1 = model.online_embedding(v1)
        k2 = model.target_embedding(v2)
        weak = model.target_embedding(w)
        torch.manual_seed(7)  # mixing is the only random draw in reco_loss
        mixed = mix_views(v1, v2, "cutmix", 1.0)
        expected_global = global_relation_loss(q1, weak, bank, 0.3, 0.05)
        target = interpolation_target(q1, k2[mixed.permutation], mixed.lam)
        expected_local = local_interpolation_loss(
            model.online_embedding(mixed.images), target, negatives, 0.2
        )
    assert terms.global_.item() == pytest.approx(expected_global.item(), rel=1e-5)
    assert terms.local.item() == pytest.approx(expected_local.item(), rel=1e-5)


def test_tau_local_defaults_to_method_temperature_and_can_be_overridden():
    assert _tiny(temperature=0.3).reco.tau_local == 0.3
    assert _tiny({**CONFIG, "tau_local": 0.7}, temperature=0.3).reco.tau_local == 0.7


def test_mixup_mode_is_used(monkeypatch):
    seen = []
    original = reco_module.mix_views

    def spy(first, second, mode, alpha):
        seen.append((mode, alpha))
        return original(first, second, mode, alpha)

    monkeypatch.setattr(reco_module, "mix_views", spy)
    model = _tiny({**CONFIG, "mix": "mixup", "alpha": 0.5})
    model.terms(*_batch())
    assert seen == [("mixup", 0.5)]


# --------------------------------------------------------------------------- (c), (d) queues
def test_one_call_scores_the_queues_as_they_were_then_fills_them(monkeypatch):
    """lightly's pattern: score against clones, enqueue in the same call, no hook."""
    scored = {}
    for name in ("global_relation_loss", "local_interpolation_loss"):
        original = getattr(reco_module, name)

        def spy(*args, _name=name, _original=original):
            scored[_name] = args[2].detach().clone()  # the bank / the negatives
            return _original(*args)

        monkeypatch.setattr(reco_module, name, spy)
    model = _tiny()
    v1, v2, w = _batch()
    bank_before, negatives_before = (
        model.reco.bank.features.clone(),
        model.reco.negatives.features.clone(),
    )
    loss = model.reco_loss((v1, v2, w))
    assert torch.equal(scored["global_relation_loss"], bank_before)
    assert torch.equal(scored["local_interpolation_loss"], negatives_before)
    with torch.no_grad():
        weak_keys = model.target_embedding(w)
        k2 = model.target_embedding(v2)
    # this step's keys went in after scoring, at the oldest rows (the queues were full)
    assert torch.allclose(model.reco.bank.features[:B], weak_keys, atol=1e-6)
    assert torch.allclose(model.reco.negatives.features[:B], k2, atol=1e-6)
    assert torch.equal(model.reco.bank.features[B:], bank_before[B:])
    assert (
        int(model.reco.bank.num_enqueued) == 16 + B
        and int(model.reco.negatives.num_enqueued) == 16 + B
    )
    # and backward still works: the enqueue did not touch what autograd saved
    loss.backward()
    assert model.online[1].weight.grad.abs().sum() > 0


def test_reco_loss_takes_the_datamodules_batch_and_needs_its_weak_view():
    model = _tiny()
    v1, v2, w = _batch()
    torch.manual_seed(5)
    from_dict = model.reco_loss({"strong": [v1, v2], "weak": w, "label": torch.zeros(B)})
    fresh = _tiny()
    torch.manual_seed(5)
    from_tuple = fresh.reco_loss((v1, v2, w))
    assert from_dict.item() == pytest.approx(from_tuple.item(), rel=1e-6) and from_dict.item() > 0
    with pytest.raises(ValueError, match="weak_view=True"):
        model.reco_loss({"strong": [v1, v2]})


def test_bank_never_scores_the_current_batch(monkeypatch):
    scored_banks = []
    original = reco_module.global_relation_loss

    def spy(student, teacher, bank, tau_s, tau_t):
        scored_banks.append(bank.detach().clone())
        return original(student, teacher, bank, tau_s, tau_t)

    monkeypatch.setattr(reco_module, "global_relation_loss", spy)
    model = _tiny()
    first, second = _batch(0), _batch(1)
    with torch.no_grad():
        weak1 = model.target_embedding(first[2])
        weak2 = model.target_embedding(second[2])
    bank_at_start = model.reco.bank.features.clone()

    def contains(bank, keys):
        return bool((torch.cdist(keys, bank) < 1e-5).any())

    model.reco_loss(first)
    assert torch.equal(scored_banks[0], bank_at_start)
    assert not contains(scored_banks[0], weak1)

    model.reco_loss(second)
    # the previous step's keys are in the bank now, this step's are not
    assert contains(scored_banks[1], weak1)
    assert not contains(scored_banks[1], weak2)


# --------------------------------------------------------------------------- (e) explicit q1/k2
def test_explicit_q1_k2_give_same_terms():
    """Passing the method's q1 and k2 gives the terms ReCo computes itself (each call
    enqueues, so each comparison uses a fresh, identical model)."""
    v1, v2, w = _batch()
    first, model, third = _tiny(), _tiny(), _tiny()
    torch.manual_seed(3)
    implicit = first.terms(v1, v2, w)
    q1 = model.online_embedding(v1)
    k2 = model.target_embedding(v2).detach()
    torch.manual_seed(3)
    explicit = model.terms(v1, v2, w, q1=q1, k2=k2)
    assert explicit.global_.item() == pytest.approx(implicit.global_.item(), rel=1e-6)
    assert explicit.local.item() == pytest.approx(implicit.local.item(), rel=1e-6)
    assert explicit.weighted.item() == pytest.approx(implicit.weighted.item(), rel=1e-6)
    # a different seed gives a different mix, so the comparison above is not vacuous
    torch.manual_seed(4)
    other = third.terms(v1, v2, w, q1=q1, k2=k2)
    assert other.local.item() != pytest.approx(implicit.local.item(), rel=1e-6)


# --------------------------------------------------------------------------- (f) off
@pytest.mark.parametrize("reco", [None, {"enabled": False}, {"enabled": False, "bank_size": 8}])
def test_reco_off_creates_nothing(reco):
    model = _tiny(reco)
    assert model.reco is None
    assert set(model.state_dict()) == set(_tiny(None).state_dict())  # nothing of ReCo's is kept
    with pytest.raises(RuntimeError, match=r"self\.reco = ReCo\("):
        model.reco_loss(_batch())


def test_reco_queues_travel_in_the_state_dict():
    model = _tiny(seed=0)  # both queues written with seed 0's keys
    fresh = _tiny(seed=1, fill=False)
    fresh.load_state_dict(model.state_dict())
    for name in ("bank", "negatives"):
        theirs, ours = getattr(fresh.reco, name), getattr(model.reco, name)
        assert (
            torch.equal(theirs.features, ours.features)
            and theirs.num_filled() == ours.num_filled() == 16
        )
    assert model.reco.config == ReCoConfig(bank_size=16, negatives_size=16)


def test_reco_accepts_config_object():
    model = _tiny(ReCoConfig(bank_size=8, negatives_size=12))
    assert model.reco.bank.size == 8 and model.reco.negatives.size == 12


def test_reco_accepts_any_mapping():
    """A Hydra user passes ``cfg.reco``: an OmegaConf DictConfig, a Mapping but not a dict.

    It must be validated and turned into a ReCoConfig like a dict is.
    """
    from omegaconf import OmegaConf

    model = _tiny(OmegaConf.create(CONFIG))
    assert isinstance(model.reco.config, ReCoConfig)
    assert model.reco.bank.size == 16
    with pytest.raises(ConfigError, match=r"reco\.tau_teacher"):
        _tiny(OmegaConf.create({**CONFIG, "tau_teacher": 0}))


def test_building_reco_with_reco_off_is_refused():
    with pytest.raises(ConfigError, match="enabled=false"):
        ReCo({"enabled": False}, DIM, nn.Linear(2, 2))


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
    assert (config.w_global, config.w_local, config.tau_student, config.tau_teacher) == (
        None,  # the owner's weights: ReCo(..., weights=), (1, 1) unless it says otherwise
        None,
        0.1,
        0.04,
    )
    assert (config.alpha, config.mix, config.tau_local) == (1.0, "auto", None)
    assert ReCoConfig.from_mapping(config) is config
    assert ReCoConfig.from_mapping(
        OmegaConf.create({"w_local": 0.5, "enabled": True})
    ) == ReCoConfig(w_local=0.5)
    with pytest.raises(TypeError, match="a ReCoConfig, a mapping or None"):
        ReCoConfig.from_mapping(0.5)


# --------------------------------------------------------------------------- (h) borrowed queue
def test_borrowed_negatives_not_duplicated_and_not_filled_by_reco():
    torch.manual_seed(0)
    own = FeatureQueue(16, DIM, name="method.queue_size")
    _fill(own)
    model = _tiny(CONFIG, negatives=own)
    assert model.reco.negatives is None and model.reco.borrows_negatives
    state = model.state_dict()
    # the lent queue is saved once, as the module's own, and ReCo keeps no copy of it
    assert sum(1 for value in state.values() if value.data_ptr() == own.features.data_ptr()) == 1
    assert (
        sum(1 for value in state.values() if value.shape == own.features.shape) == 2
    )  # it + the relation bank

    before = own.features.clone()
    terms = model.terms(*_batch())
    terms.weighted.backward()
    assert torch.equal(own.features, before)
    assert int(own.pointer) == 0 and int(own.num_enqueued) == 16  # as _fill left it
    assert int(model.reco.bank.num_enqueued) == 16 + B  # the bank is still ReCo's to fill


def test_borrowed_negatives_are_the_ones_scored(monkeypatch):
    scored = []
    original = reco_module.local_interpolation_loss

    def spy(mixed, target, negatives, *args):
        scored.append(negatives)
        return original(mixed, target, negatives, *args)

    monkeypatch.setattr(reco_module, "local_interpolation_loss", spy)
    own = FeatureQueue(16, DIM)
    _fill(own)
    model = _tiny(CONFIG, negatives=own)
    lent = own.filled().clone()
    model.terms(*_batch(), negatives=lent)
    assert scored[0] is lent


def test_a_borrowing_reco_without_lent_negatives_says_so():
    own = FeatureQueue(16, DIM)
    model = _tiny(CONFIG, negatives=own)
    with pytest.raises(RuntimeError, match="negatives="):
        model.reco(model, *_batch())


@pytest.mark.parametrize("order", ["mixin first", "mixin last"])
def test_either_base_order_works(order):
    """The mixin has no hooks, so where it sits among the bases does not matter."""
    bases = (
        (ReCoMixin, L.LightningModule) if order == "mixin first" else (L.LightningModule, ReCoMixin)
    )

    def init(self):
        L.LightningModule.__init__(self)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(C * S * S, DIM))
        self.reco = ReCo(CONFIG, DIM, self)

    Either = type(
        "Either",
        bases,
        {
            "__init__": init,
            "online_embedding": lambda self, x: F.normalize(self.net(x), dim=1),
        },
    )
    model = Either()
    for seed in range(5):  # four batches fill the bank and negatives, the fifth is scored
        loss = model.reco_loss(_batch(seed))
    assert loss.item() > 0
    assert int(model.reco.bank.num_enqueued) == 5 * B


def test_a_reco_built_before_the_networks_says_to_build_it_last():
    class Early(ReCoMixin, L.LightningModule):
        def __init__(self):
            super().__init__()
            self.reco = ReCo(CONFIG, DIM, self)  # before the encoder exists: nothing to copy
            self.online = nn.Linear(4, DIM)

        def online_embedding(self, images):
            return F.normalize(self.online(images), dim=1)

    with pytest.raises(ConfigError, match="build self.reco last in __init__.*teacher_modules="):
        Early()
