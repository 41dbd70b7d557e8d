"""ReCo's teacher, warm-up and written-rows-only queues (issue "ReCo must pay for itself").

- ReCo's own EMA teacher moves exactly once per optimizer step, also with gradient
  accumulation, and matches a hand-computed EMA;
- it is saved in checkpoints and restored, gets no gradient and is not optimised;
- ``teacher=auto`` uses the method's own target network where there is one;
- unwritten queue rows are left out of both terms (half-filled bank against a hand
  computation), and a term with fewer rows than a batch is skipped;
- batch negatives leave out each row's own key and its mixing partner's;
- the warm-up weights follow their schedule.
"""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from reco_lightning.errors import ConfigError
from reco_lightning.methods import BYOL, MoCo, SimCLR
from reco_lightning.reco import ReCoConfig, ReCoMixin, mixin as mixin_module
from reco_lightning.losses.relation import global_relation_loss, interpolation_target, local_interpolation_loss
from reco_lightning.reco.mixing import mix_views
from reco_lightning.reco.queue import FeatureQueue
from reco_lightning.reco.teacher import EMATeacher
from reco_lightning.utils.momentum import OncePerOptimizerStep

B, C, S, DIM = 4, 3, 8, 8


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class NoTarget(ReCoMixin, L.LightningModule):
    """A user module without a target network: ReCo must keep an EMA teacher of its own."""

    def __init__(self, reco: dict, lr: float = 0.5) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(C * S * S, DIM))
        self.lr = lr
        self.setup_reco(reco, DIM)

    def online_embedding(self, images):
        return F.normalize(self.encoder(images), dim=1)

    def training_step(self, batch, batch_idx):
        v1, v2 = batch["strong"]
        base = (self.online_embedding(v1) - self.online_embedding(v2)).pow(2).sum(dim=1).mean()
        return base + self.reco_loss(v1, v2, batch["weak"]).weighted

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class Views(Dataset):
    def __init__(self, n: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, C, S, S, generator=generator)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i):
        v1, v2, w = self.images[i]
        return {"strong": [v1, v2], "weak": w}


def _batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, C, S, S, generator=generator) for _ in range(3))


def _keys(n: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed)), dim=1)


# --------------------------------------------------------------------------- once per step
def test_ema_teacher_moves_once_per_optimizer_step_with_accumulation(tmp_path):
    """4 micro-batches, accumulate 2: 2 optimizer steps, 2 teacher updates, hand-computed EMA."""
    momentum = 0.5
    torch.manual_seed(0)
    model = NoTarget({"bank_size": 16, "negatives_size": 16, "teacher_momentum": momentum})
    assert model.reco_teacher_kind == "ema"
    start = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    after_steps: list[dict[str, torch.Tensor]] = []

    class RecordOnlineAfterStep(L.Callback):
        """The online weights after each optimizer step (callbacks run before the module's
        on_train_batch_end, where the teacher moves)."""

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if (batch_idx + 1) % 2 == 0:
                after_steps.append({k: v.clone() for k, v in pl_module.encoder.state_dict().items()})

    updates = []
    original = EMATeacher.update

    def counting(self, owner, m, step):
        moved = original(self, owner, m, step)
        updates.append(moved)
        return moved

    EMATeacher.update = counting  # type: ignore[method-assign]
    try:
        trainer = L.Trainer(
            max_epochs=1, accumulate_grad_batches=2, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, callbacks=[RecordOnlineAfterStep()],
            accelerator="cpu",
        )
        trainer.fit(model, DataLoader(Views(4 * B), batch_size=B))
    finally:
        EMATeacher.update = original  # type: ignore[method-assign]

    assert trainer.global_step == 2
    assert updates == [False, True, False, True]  # called per micro-batch, moved per step
    expected = start
    for online in after_steps:
        expected = {k: momentum * expected[k] + (1 - momentum) * online[k] for k in expected}
    teacher = model.reco_teacher.copies["encoder"].state_dict()
    for key, value in expected.items():
        assert torch.allclose(teacher[key], value, atol=1e-6), key
    assert not torch.allclose(teacher["1.weight"], after_steps[-1]["1.weight"])  # not a plain copy


def test_step_gate_is_saved_and_restored():
    gate = OncePerOptimizerStep()
    assert [gate.due(s) for s in (0, 1, 1, 2)] == [False, True, False, True]
    restored = OncePerOptimizerStep()
    restored.load_state_dict(gate.state_dict())
    assert restored.last_step == 2 and restored.due(2) is False and restored.due(3) is True
    assert all(OncePerOptimizerStep().due(None) for _ in range(3))  # no Trainer: every call


# --------------------------------------------------------------------------- ownership
def _simclr(**reco):
    torch.manual_seed(0)
    return SimCLR(num_classes=10, backbone_width=8, small_stem=True, proj_hidden_dim=32, proj_output_dim=16,
                  reco={"bank_size": 64, "negatives_size": 64, **reco})


def test_simclr_teacher_is_in_the_checkpoint_and_comes_back():
    model = _simclr(teacher_momentum=0.5)
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(0.1)
    assert model.reco_teacher.update(model, 0.5, step=7)
    state = model.state_dict()
    teacher_keys = [k for k in state if k.startswith("reco_teacher.copies.")]
    assert any(k.startswith("reco_teacher.copies.backbone.") for k in teacher_keys)
    assert any(k.startswith("reco_teacher.copies.projector.") for k in teacher_keys)
    assert not any(k.startswith("reco_teacher.copies.classifier") for k in teacher_keys)

    fresh = _simclr(teacher_momentum=0.5)
    fresh.load_state_dict(state)
    for (name, a), b in zip(model.reco_teacher.state_dict().items(), fresh.reco_teacher.state_dict().values()):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b, name
    assert fresh.reco_teacher.step_gate.last_step == 7
    # and the restored teacher is a moved copy, not the online network
    w_teacher = fresh.reco_teacher.copies["backbone"].conv1.weight
    assert not torch.equal(w_teacher, fresh.backbone.conv1.weight)


def test_simclr_teacher_gets_no_gradient_and_is_not_optimised():
    model = _simclr()
    generator = torch.Generator().manual_seed(0)
    batch = {"strong": [torch.randn(B, 3, 16, 16, generator=generator) for _ in range(2)],
             "weak": torch.randn(B, 3, 16, 16, generator=generator), "label": torch.randint(10, (B,))}
    for queue in (model.relation_bank, model.reco_negatives):
        queue.enqueue(F.normalize(torch.randn(queue.size, 16), dim=1))
    model.training_step(batch, 0).backward()
    teacher_params = list(model.reco_teacher.parameters())
    assert teacher_params and all(p.grad is None and not p.requires_grad for p in teacher_params)
    assert any(p.grad is not None for p in model.backbone.parameters())
    optimised = {id(p) for group in model.parameter_groups() for p in group["params"]}
    assert not optimised & {id(p) for p in teacher_params}
    assert {id(p) for p in model.backbone.parameters()} <= optimised


def test_teacher_moves_with_the_module():
    model = _simclr().to(torch.float64)
    assert model.reco_teacher.copies["backbone"].conv1.weight.dtype == torch.float64


# --------------------------------------------------------------------------- which teacher
@pytest.mark.parametrize("cls, kind", [(MoCo, "method"), (BYOL, "method"), (SimCLR, "ema")])
def test_auto_uses_the_methods_target_where_it_has_one(cls, kind):
    sizes = dict(proj_hidden_dim=32, proj_output_dim=16)
    if cls is BYOL:
        sizes["pred_hidden_dim"] = 32
    model = cls(num_classes=10, backbone_width=8, small_stem=True, reco={"bank_size": 64, "negatives_size": 64},
                **sizes)
    assert model.reco_teacher_kind == kind
    assert hasattr(model, "reco_teacher") is (kind == "ema")


def test_auto_target_embedding_is_used_when_the_module_has_one(monkeypatch):
    model = MoCo(num_classes=10, backbone_width=8, small_stem=True, proj_hidden_dim=32, proj_output_dim=16,
                 queue_size=64, reco={"bank_size": 64})
    calls = []
    original = MoCo.target_embedding
    monkeypatch.setattr(MoCo, "target_embedding", lambda self, x: calls.append(x.shape) or original(self, x))
    v1, v2, w = (torch.randn(B, 3, 16, 16) for _ in range(3))
    model.reco_loss(v1, v2, w)
    assert len(calls) == 2  # v2 and the weak view


@pytest.mark.parametrize("choice, kind", [("ema", "ema"), ("online", "online")])
def test_teacher_setting_overrides_auto(choice, kind):
    model = MoCo(num_classes=10, backbone_width=8, small_stem=True, proj_hidden_dim=32, proj_output_dim=16,
                 queue_size=64, reco={"bank_size": 64, "teacher": choice})
    assert model.reco_teacher_kind == kind


def test_online_teacher_scores_against_the_online_network():
    model = _simclr(teacher="online")
    images = torch.randn(B, 3, 16, 16)
    model.eval()
    assert torch.allclose(model.reco_teacher_embedding(images), model.online_embedding(images))


def test_unknown_teacher_and_negatives_are_named():
    with pytest.raises(ConfigError, match=r"reco\.teacher"):
        ReCoConfig(teacher="student")
    with pytest.raises(ConfigError, match=r"reco\.negatives"):
        ReCoConfig(negatives="bank")
    with pytest.raises(ConfigError, match=r"reco\.teacher_momentum"):
        ReCoConfig(teacher_momentum=1.5)
    with pytest.raises(ConfigError, match=r"reco\.warmup_epochs"):
        ReCoConfig(warmup_epochs=-1)


# --------------------------------------------------------------------------- written rows only
class WithTarget(ReCoMixin, L.LightningModule):
    def __init__(self, reco: dict) -> None:
        super().__init__()
        self.online = nn.Sequential(nn.Flatten(), nn.Linear(C * S * S, DIM))
        self.target = nn.Sequential(nn.Flatten(), nn.Linear(C * S * S, DIM))
        self.setup_reco(reco, DIM)

    def online_embedding(self, images):
        return F.normalize(self.online(images), dim=1)

    def target_embedding(self, images):
        return F.normalize(self.target(images), dim=1)


def test_half_filled_queues_score_only_their_written_rows():
    torch.manual_seed(0)
    model = WithTarget({"bank_size": 16, "negatives_size": 16})
    model.relation_bank.enqueue(_keys(8, 1))
    model.reco_negatives.enqueue(_keys(8, 2))
    v1, v2, w = _batch()
    torch.manual_seed(5)
    terms = model.reco_loss(v1, v2, w)
    with torch.no_grad():
        q1, k2, weak = model.online_embedding(v1), model.target_embedding(v2), model.target_embedding(w)
        torch.manual_seed(5)
        mixed = mix_views(v1, v2, "cutmix", 1.0)
        target = interpolation_target(q1, k2[mixed.permutation], mixed.lam)
        z = model.online_embedding(mixed.images)
        # by hand: only the 8 written rows, never the 8 random start-up rows
        bank, negatives = _keys(8, 1), _keys(8, 2)
        p_t = F.softmax(weak @ bank.T / 0.04, dim=1)
        expected_global = -(p_t * F.log_softmax(q1 @ bank.T / 0.1, dim=1)).sum(dim=1).mean()
        logits = torch.cat([(z * target).sum(dim=1, keepdim=True), z @ negatives.T], dim=1) / 0.2
        expected_local = F.cross_entropy(logits, torch.zeros(B, dtype=torch.long))
        whole_bank = global_relation_loss(q1, weak, model.relation_bank.features)
    assert terms.global_.item() == pytest.approx(expected_global.item(), rel=1e-5)
    assert terms.local.item() == pytest.approx(expected_local.item(), rel=1e-5)
    assert terms.global_.item() != pytest.approx(whole_bank.item(), rel=1e-3)  # the test can tell


def test_a_queue_with_fewer_rows_than_a_batch_skips_its_term():
    torch.manual_seed(0)
    model = WithTarget({"bank_size": 16, "negatives_size": 16})
    model.relation_bank.enqueue(_keys(B - 1, 1))  # one short of a batch
    model.reco_negatives.enqueue(_keys(B, 2))
    terms = model.reco_loss(*_batch())
    assert terms.global_ is None and terms.local is not None
    assert terms.weighted.item() == pytest.approx(terms.local.item())


def test_batch_negatives_leave_out_own_and_partner_keys(monkeypatch):
    torch.manual_seed(0)
    model = WithTarget({"bank_size": 16, "negatives": "batch"})
    assert not hasattr(model, "reco_negatives")
    model.relation_bank.enqueue(_keys(16, 1))
    permutation = torch.tensor([1, 2, 3, 0])
    real_mix = mix_views

    def fixed_mix(first, second, mode, alpha):
        mixed = real_mix(first, second, mode, alpha)
        lam = 0.75
        return type(mixed)(lam * first + (1 - lam) * second[permutation], permutation, lam)

    monkeypatch.setattr(mixin_module, "mix_views", fixed_mix)
    v1, v2, w = _batch()
    terms = model.reco_loss(v1, v2, w)
    with torch.no_grad():
        q1, k2 = model.online_embedding(v1), model.target_embedding(v2)
        target = interpolation_target(q1, k2[permutation], 0.75)
        z = model.online_embedding(0.75 * v1 + 0.25 * v2[permutation])
        rows = []
        for i in range(B):
            others = [j for j in range(B) if j not in (i, int(permutation[i]))]
            logits = torch.cat([(z[i] * target[i]).sum().view(1), z[i] @ k2[others].T]) / 0.2
            rows.append(-F.log_softmax(logits, dim=0)[0])
        expected = torch.stack(rows).mean()
    assert terms.local.item() == pytest.approx(expected.item(), rel=1e-5)
    # nothing is enqueued as negatives: the batch is its own set
    model.on_train_batch_end(None, None, 0)
    assert int(model.relation_bank.num_enqueued) == 16 + B


def test_a_lent_queue_counts_only_its_written_rows():
    torch.manual_seed(0)
    lent = FeatureQueue(16, DIM)
    lent.enqueue(_keys(6, 3))
    model = WithTarget.__new__(WithTarget)
    L.LightningModule.__init__(model)
    model.online = nn.Sequential(nn.Flatten(), nn.Linear(C * S * S, DIM))
    model.target = nn.Sequential(nn.Flatten(), nn.Linear(C * S * S, DIM))
    model.setup_reco({"bank_size": 16}, DIM, negatives=lent)
    assert model.reco_negatives.filled().shape[0] == 6
    assert torch.equal(model.reco_negatives.filled(), _keys(6, 3))


# --------------------------------------------------------------------------- warm-up
def test_warmup_weights_follow_the_schedule(monkeypatch):
    torch.manual_seed(0)
    model = WithTarget({"bank_size": 16, "w_global": 2.0, "w_local": 0.5, "warmup_epochs": 1.5})
    step = {"now": 0}
    # 10 optimizer steps per epoch (100 in 10 epochs): warm-up over 15 steps
    monkeypatch.setattr(type(model), "_optimizer_steps", lambda self: (step["now"], 100, 10))
    expected = {0: 0.0, 3: 0.2, 6: 0.4, 15: 1.0, 40: 1.0}
    for now, scale in expected.items():
        step["now"] = now
        w_global, w_local = model.reco_weights()
        assert w_global == pytest.approx(2.0 * scale) and w_local == pytest.approx(0.5 * scale), now
    no_warmup = WithTarget({"bank_size": 16, "w_global": 2.0, "warmup_epochs": 0})
    monkeypatch.setattr(type(no_warmup), "_optimizer_steps", lambda self: (0, 100, 10))
    assert no_warmup.reco_weights() == (2.0, 1.0)


def test_warmup_weight_zero_adds_nothing(monkeypatch):
    torch.manual_seed(0)
    model = WithTarget({"bank_size": 16, "negatives_size": 16, "warmup_epochs": 1})
    model.relation_bank.enqueue(_keys(16, 1))
    model.reco_negatives.enqueue(_keys(16, 2))
    monkeypatch.setattr(type(model), "_optimizer_steps", lambda self: (0, 100, 10))
    terms = model.reco_loss(*_batch())
    assert terms.global_ is None and terms.local is None and terms.weighted.item() == 0.0
    monkeypatch.setattr(type(model), "_optimizer_steps", lambda self: (5, 100, 10))
    terms = model.reco_loss(*_batch())
    assert terms.weighted.item() == pytest.approx(0.5 * (terms.global_ + terms.local).item(), rel=1e-6)
