"""MoCo, SimCLR and BYOL without a Trainer: training_step, gradients, queues, momentum.

The models are tiny (ResNet-18 of width 8 with the small stem on 16 px images, batch 4)
so the whole file runs in seconds on a CPU.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from reco_lightning.losses.instance import info_nce_loss
from reco_lightning.methods import BYOL, MoCo, SimCLR, SimSiam
from reco_lightning.methods.base import MethodOutput
from reco_lightning.utils.momentum import cosine_momentum, ema_update, make_target
from reco_lightning.utils.optim import warmup_cosine

B, S, NUM_CLASSES = 4, 16, 10
COMMON = dict(num_classes=NUM_CLASSES, backbone_width=8, small_stem=True)
SIZES = {
    MoCo: dict(proj_hidden_dim=32, proj_output_dim=16, queue_size=64),
    SimCLR: dict(proj_hidden_dim=32, proj_output_dim=16),
    BYOL: dict(proj_hidden_dim=32, proj_output_dim=16, pred_hidden_dim=32),
    SimSiam: dict(proj_hidden_dim=32, proj_output_dim=16, pred_hidden_dim=8),
}
RECO_ON = {"bank_size": 64, "negatives_size": 64}
METHODS = [MoCo, SimCLR, BYOL, SimSiam]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny convolutions gain nothing from intra-op threads, and on a shared 2-CPU machine
    OpenMP spinning makes them orders of magnitude slower; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _quiet():
    # self.log without a Trainer only warns
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.fixture
def fake_total_steps(monkeypatch):
    """Momentum schedules read ``trainer.estimated_stepping_batches``; there is no trainer."""
    for cls in METHODS:
        monkeypatch.setattr(cls, "total_steps", property(lambda self: 100))


def build(cls, reco=None, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return cls(**COMMON, **SIZES[cls], reco=reco, **kwargs)


def fill_reco_queues(model) -> None:
    """Write ReCo's queues whole (unwritten rows are left out, so fresh queues skip both terms)."""
    generator = torch.Generator().manual_seed(123)
    negatives = (
        model.reco.negatives if model.reco.negatives is not None else model.queue
    )  # MoCo lends its own
    for queue in (model.reco.bank, negatives):
        keys = torch.randn(queue.size, queue.features.shape[1], generator=generator)
        queue.enqueue(nn.functional.normalize(keys, dim=1))


def make_batch(seed: int = 0, with_weak: bool = True) -> dict:
    generator = torch.Generator().manual_seed(seed)
    v1, v2, w = (torch.randn(B, 3, S, S, generator=generator) for _ in range(3))
    batch = {"strong": [v1, v2], "label": torch.randint(NUM_CLASSES, (B,), generator=generator)}
    if with_weak:
        batch["weak"] = w
    return batch


def _grads(module: nn.Module) -> list:
    return [p.grad for p in module.parameters()]


def _has_grad(module: nn.Module) -> bool:
    grads = _grads(module)
    return (
        bool(grads) and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    )


def _no_grad(module: nn.Module) -> bool:
    return all(g is None for g in _grads(module))


# --------------------------------------------------------------------------- training_step
@pytest.mark.parametrize("reco", [None, RECO_ON], ids=["plain", "reco"])
@pytest.mark.parametrize("cls", METHODS, ids=lambda c: c.__name__)
def test_training_step_loss_and_gradients(cls, reco):
    model = build(cls, reco)
    assert model.reco_enabled is (reco is not None)
    loss = model.training_step(make_batch(), 0)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert _has_grad(model.backbone)
    assert _has_grad(model.projector)
    assert _has_grad(model.classifier)
    if cls is BYOL:
        assert _has_grad(model.predictor)
    if cls in (MoCo, BYOL):
        assert _no_grad(model.target_backbone)
        assert _no_grad(model.target_projector)


@pytest.mark.parametrize("cls", METHODS, ids=lambda c: c.__name__)
def test_reco_step_adds_weighted_terms(cls, monkeypatch):
    """With ReCo on, the returned loss is method + weighted ReCo terms + probe."""
    model = build(cls, RECO_ON)
    fill_reco_queues(model)
    seen = {}
    original = type(model.reco).forward

    def spy(self, *args, **kwargs):
        seen["terms"] = original(self, *args, **kwargs)
        return seen["terms"]

    original_step = type(model).method_step

    def method_spy(self, v1, v2):
        seen["method"] = original_step(self, v1, v2)
        return seen["method"]

    monkeypatch.setattr(type(model.reco), "forward", spy)
    monkeypatch.setattr(type(model), "method_step", method_spy)
    batch = make_batch()
    loss = model.training_step(batch, 0)
    probe = nn.functional.cross_entropy(
        model.classifier(seen["method"].features.detach()), batch["label"]
    )
    expected = seen["method"].loss + seen["terms"].weighted + probe
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert seen["terms"].global_.item() > 0 and seen["terms"].local.item() > 0


@pytest.mark.parametrize("cls", METHODS, ids=lambda c: c.__name__)
def test_reco_on_without_weak_view_raises(cls):
    from reco_lightning.errors import ConfigError

    model = build(cls, RECO_ON)
    with pytest.raises(ConfigError, match="weak"):
        model.training_step(make_batch(with_weak=False), 0)


@pytest.mark.parametrize("cls", METHODS, ids=lambda c: c.__name__)
def test_online_probe_does_not_train_backbone(cls, monkeypatch):
    """Only the probe's path carries gradient here; it must stop at the backbone features."""
    model = build(cls)
    original = type(model).method_step

    def without_ssl_gradient(self, v1, v2):
        out = original(self, v1, v2)
        return MethodOutput(out.loss.detach(), out.q1, out.k2, out.features)

    monkeypatch.setattr(type(model), "method_step", without_ssl_gradient)
    loss = model.training_step(make_batch(), 0)
    loss.backward()
    assert _has_grad(model.classifier)
    assert _no_grad(model.backbone)
    assert _no_grad(model.projector)


# --------------------------------------------------------------------------- momentum helpers
def test_ema_update_by_hand():
    online = nn.Linear(2, 1)
    target = make_target(online)
    assert all(not p.requires_grad for p in target.parameters())
    with torch.no_grad():
        online.weight.copy_(torch.tensor([[1.0, 2.0]]))
        online.bias.fill_(3.0)
        target.weight.copy_(torch.tensor([[-1.0, 0.0]]))
        target.bias.fill_(1.0)
    ema_update(target, online, 0.9)
    # 0.9 * target + 0.1 * online
    assert torch.allclose(target.weight, torch.tensor([[-0.9 + 0.1, 0.0 + 0.2]]))
    assert torch.allclose(target.bias, torch.tensor([0.9 + 0.3]))
    assert torch.equal(online.weight, torch.tensor([[1.0, 2.0]]))  # online untouched
    ema_update(target, online, 1.0)
    assert torch.allclose(target.weight, torch.tensor([[-0.8, 0.2]]))
    ema_update(target, online, 0.0)
    assert torch.equal(target.weight, online.weight)


def test_ema_update_copies_buffers():
    online = nn.BatchNorm1d(3)
    target = make_target(online)
    online(torch.randn(8, 3))  # updates online running stats
    ema_update(target, online, 0.99)
    assert torch.equal(target.running_mean, online.running_mean)
    assert torch.equal(target.running_var, online.running_var)


def test_cosine_momentum_endpoints():
    assert cosine_momentum(0.99, 0, 100) == pytest.approx(0.99)
    assert cosine_momentum(0.99, 100, 100) == pytest.approx(1.0)
    assert cosine_momentum(0.99, 50, 100) == pytest.approx(1 - 0.01 * 0.5)
    assert cosine_momentum(0.99, 250, 100) == pytest.approx(1.0)  # clamped after the end
    assert cosine_momentum(0.9, 25, 100) == pytest.approx(1 - 0.1 * (math.cos(math.pi / 4) + 1) / 2)
    values = [cosine_momentum(0.9, s, 10) for s in range(11)]
    assert values == sorted(values)


def test_warmup_cosine_endpoints():
    assert warmup_cosine(0, 10, 110) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 110) == pytest.approx(1.0)
    assert warmup_cosine(10, 10, 110) == pytest.approx(1.0)
    assert warmup_cosine(60, 10, 110) == pytest.approx(0.5)
    assert warmup_cosine(110, 10, 110) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(0, 0, 100) == pytest.approx(1.0)
    assert warmup_cosine(100, 0, 100, final_ratio=0.1) == pytest.approx(0.1)


@pytest.mark.parametrize("cls", [MoCo, BYOL], ids=lambda c: c.__name__)
def test_on_train_batch_end_applies_ema(cls, fake_total_steps):
    model = build(cls, momentum=0.9)
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(0.5)
    target_before = [p.clone() for p in model.target_backbone.parameters()]
    online = [p.clone() for p in model.backbone.parameters()]
    if cls is MoCo:
        model.training_step(make_batch(), 0)  # MoCo enqueues keys; give it some
    model.on_train_batch_end(None, make_batch(), 0)
    m = 0.9  # global_step is 0 without a trainer: BYOL's cosine is at its base
    for after, before, on in zip(model.target_backbone.parameters(), target_before, online):
        assert torch.allclose(after, m * before + (1 - m) * on, atol=1e-6)


def test_moco_cosine_schedule_uses_total_steps(fake_total_steps, monkeypatch):
    model = build(MoCo, momentum=0.9, momentum_schedule="cosine")
    assert model.current_momentum() == pytest.approx(0.9)
    monkeypatch.setattr(MoCo, "global_step", property(lambda self: 100))
    assert model.current_momentum() == pytest.approx(1.0)
    assert build(MoCo, momentum=0.9).current_momentum() == 0.9  # constant


# --------------------------------------------------------------------------- MoCo queue
@pytest.mark.parametrize("symmetric", [False, True])
def test_moco_scores_queue_before_step_and_enqueues_after(symmetric):
    model = build(MoCo, symmetric=symmetric)
    batch = make_batch()
    v1, v2 = batch["strong"]
    queue_before = model.queue.features.clone()
    # keys and queries as the step computes them (train-mode BN: batch statistics)
    k1 = model.target_embedding(v1)
    k2 = model.target_embedding(v2)
    with torch.no_grad():
        q1 = model.online_embedding(v1)
        q2 = model.online_embedding(v2)

    output = model.method_step(v1, v2)
    # scored against the queue as it was before the step: not against its own keys
    expected = info_nce_loss(q1, k2, queue_before, 0.2)
    if symmetric:
        expected = (expected + info_nce_loss(q2, k1, queue_before, 0.2)) / 2
    assert output.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # and the keys went in during the same call, once
    n = 2 * B if symmetric else B
    assert int(model.queue.pointer) == n and int(model.queue.num_enqueued) == n
    keys = torch.cat([k1, k2]) if symmetric else k2
    assert torch.allclose(model.queue.features[:n], keys, atol=1e-5)
    assert torch.equal(model.queue.features[n:], queue_before[n:])
    # the loss still backpropagates: enqueueing did not overwrite what autograd saved
    output.loss.backward()
    model.on_train_batch_end(None, batch, 0)  # the EMA hook does not touch the queue
    assert int(model.queue.num_enqueued) == n


@pytest.mark.parametrize("symmetric", [False, True])
def test_moco_with_reco_borrows_queue_and_only_moco_fills_it(symmetric):
    model = build(MoCo, RECO_ON, symmetric=symmetric)
    assert model.reco.borrows_negatives and model.reco.negatives is None

    batch = make_batch()
    for step in range(2):
        loss = model.training_step(batch, step)
        loss.backward()
        model.on_train_batch_end(None, batch, step)
        per_step = 2 * B if symmetric else B
        assert int(model.queue.num_enqueued) == per_step * (step + 1)
        assert int(model.reco.bank.num_enqueued) == B * (step + 1)


def test_moco_lends_reco_the_queue_as_it_was_before_its_keys(monkeypatch):
    """ReCo's local term scores MoCo's written queue rows from before this step's enqueue."""
    model = build(MoCo, RECO_ON)
    keys = nn.functional.normalize(torch.randn(3 * B, 16), dim=1)
    model.queue.enqueue(keys)
    lent = {}
    original = type(model.reco).forward

    def spy(self, *args, **kwargs):
        lent["negatives"] = kwargs["negatives"].clone()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(model.reco), "forward", spy)
    model.training_step(make_batch(), 0)
    assert torch.equal(
        lent["negatives"], keys
    )  # 3 batches written, this step's keys not among them
    assert int(model.queue.num_enqueued) == 4 * B


@pytest.mark.parametrize("cls", [SimCLR, BYOL, SimSiam], ids=lambda c: c.__name__)
def test_reco_queues_of_methods_without_queue(cls, fake_total_steps):
    model = build(cls, RECO_ON)
    assert model.reco.negatives is not None and not model.reco.borrows_negatives
    batch = make_batch()
    loss = model.training_step(batch, 0)
    # one call scores and enqueues: no hook is needed, and backward still works after it
    assert int(model.reco.bank.num_enqueued) == B
    assert int(model.reco.negatives.num_enqueued) == B
    loss.backward()


def test_simclr_reco_negatives_are_detached_second_view_embeddings():
    model = build(SimCLR, RECO_ON)
    batch = make_batch()
    with torch.no_grad():
        z2 = model.online_embedding(batch["strong"][1])
    model.training_step(batch, 0)
    assert torch.allclose(model.reco.negatives.features[:B], z2, atol=1e-5)


# --------------------------------------------------------------------------- reproducibility
@pytest.mark.parametrize("cls", METHODS, ids=lambda c: c.__name__)
def test_reco_disabled_is_the_plain_method(cls):
    plain = build(cls, None, seed=5)
    disabled = build(cls, {"enabled": False, "bank_size": 64}, seed=5)
    assert disabled.reco_enabled is False
    assert set(plain.state_dict()) == set(disabled.state_dict())
    for (name, a), b in zip(plain.state_dict().items(), disabled.state_dict().values()):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b, name
    batch = make_batch(3)
    torch.manual_seed(11)
    loss_plain = plain.training_step(batch, 0)
    torch.manual_seed(11)
    loss_disabled = disabled.training_step(batch, 0)
    assert torch.equal(loss_plain, loss_disabled)


# -- backbone.compile -------------------------------------------------------------------
@pytest.fixture
def compiled(monkeypatch) -> list[nn.Module]:
    """The modules that ``nn.Module.compile`` is called on (which compiles in place)."""
    calls: list[nn.Module] = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, *args, **kwargs: calls.append(self))
    return calls


@pytest.mark.parametrize("cls", [MoCo, BYOL])
def test_setup_compiles_online_and_target_backbones_in_place(cls, compiled) -> None:
    eager = build(cls)
    model = build(cls, compile_backbone=True)
    assert compiled == []  # lazily, at setup: after the target network was copied
    model.setup("fit")
    assert [id(m) for m in compiled] == [id(model.backbone), id(model.target_backbone)]
    assert model.target_backbone is not model.backbone
    assert list(model.state_dict()) == list(eager.state_dict())  # checkpoints stay interchangeable


def test_setup_leaves_backbones_eager_by_default(compiled) -> None:
    build(MoCo).setup("fit")
    assert compiled == []


@pytest.mark.slow
def test_compiled_step_matches_eager_step() -> None:
    eager, compiled = build(MoCo), build(MoCo, compile_backbone=True)
    compiled.setup("fit")
    batch = make_batch()
    torch.testing.assert_close(
        compiled.training_step(batch, 0), eager.training_step(batch, 0), rtol=1e-4, atol=1e-4
    )


# -- BYOL's predictor learning rate ---------------------------------------------------------
def test_byol_predictor_lr_scale_gives_the_predictor_groups_of_its_own() -> None:
    model = build(BYOL, predictor_lr_scale=10.0, lr=0.2)
    groups = model.parameter_groups()
    predictor = {id(p) for p in model.predictor.parameters()}
    scaled = [g for g in groups if g.get("lr") == pytest.approx(2.0)]
    assert {id(p) for g in scaled for p in g["params"]} == predictor
    others = [p for g in groups if "lr" not in g for p in g["params"]]
    assert others and not predictor & {id(p) for p in others}
    trainable = {
        id(p)
        for n, p in model.named_parameters()
        if p.requires_grad and not n.startswith("classifier")
    }
    assert {id(p) for g in groups for p in g["params"]} == trainable  # every parameter once


def test_byol_predictor_lr_scale_must_be_positive() -> None:
    from reco_lightning.errors import ConfigError

    with pytest.raises(ConfigError, match="method.predictor_lr_scale"):
        build(BYOL, predictor_lr_scale=0.0)


def test_simsiam_loss_is_the_symmetric_stop_gradient_cosine():
    """SimSiam by hand: 2 - 2 cos(p_i, stopgrad(z_j)), averaged over both directions; the
    projections get gradient only through the predictions."""
    model = build(SimSiam)
    v1, v2 = make_batch()["strong"]
    output = model.method_step(v1, v2)
    with torch.no_grad():
        z1, z2 = model.projector(model.backbone(v1)), model.projector(model.backbone(v2))
        p1, p2 = model.predictor(z1), model.predictor(z2)
        cos = nn.functional.cosine_similarity
        expected = ((2 - 2 * cos(p1, z2)).mean() + (2 - 2 * cos(p2, z1)).mean()) / 2
    assert output.loss.item() == pytest.approx(expected.item(), rel=1e-4)
    assert not output.k2.requires_grad and output.q1.requires_grad
    assert model.reco is None
    with_reco = build(SimSiam, RECO_ON)
    assert with_reco.reco.teacher_kind == "ema"  # no target network: ReCo's own EMA teacher
