"""ReCo's teacher, warm-up and written-rows-only queues (issue "ReCo must pay for itself"),
against the composed ``ReCo`` module.

- ReCo's own EMA teacher moves exactly once per optimizer step, also with gradient
  accumulation (at the start of the first ReCo call after the step, gated by
  ``global_step``), and matches a hand-computed EMA;
- it (and its step gate) is saved in checkpoints and restored, also from checkpoints
  written with the old key names; it gets no gradient, is not optimised and moves with
  the module;
- ``teacher=auto`` uses the method's own target network where there is one;
- unwritten queue rows are left out of both terms (half-filled bank against a hand
  computation), a lent queue counts only its written rows, and a term with fewer rows
  than a global batch is skipped;
- batch negatives leave out each row's own key and its mixing partner's;
- the warm-up weights follow their schedule, and a weight of zero adds nothing.
"""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from reco_lightning.errors import ConfigError
from reco_lightning.losses.relation import global_relation_loss, interpolation_target
from reco_lightning.methods import BYOL, MoCo, SimCLR, SimSiam
from reco_lightning.models.queue import FeatureQueue
from reco_lightning.reco import ReCo, ReCoConfig, ReCoMixin, TrainingProgress, training_progress
from reco_lightning.reco import mixin as mixin_module
from reco_lightning.reco import module as reco_module
from reco_lightning.reco.mixing import mix_views
from reco_lightning.reco.teacher import EMATeacher
from reco_lightning.utils.momentum import OncePerOptimizerStep

B, C, S, DIM = 4, 3, 8, 8


@pytest.fixture(autouse=True)
def _quiet():
    # self.log without a Trainer only warns; Lightning's hints about tiny loaders too
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class NoTarget(ReCoMixin, L.LightningModule):
    """A user module without a target network: ReCo must keep an EMA teacher of its own.

    ``teacher_after_call`` records the teacher's weights right after every ReCo call, and
    ``keys_match_teacher`` whether the weak keys it enqueued are that teacher's."""

    def __init__(self, reco: dict, lr: float = 0.5) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(C * S * S, DIM))
        self.lr = lr
        self.teacher_after_call: list[dict[str, torch.Tensor]] = []
        self.keys_match_teacher: list[bool] = []
        self.reco = ReCo(reco, DIM, self)

    def online_embedding(self, images):
        return F.normalize(self.encoder(images), dim=1)

    def training_step(self, batch, batch_idx):
        v1, v2 = batch["strong"]
        base = (self.online_embedding(v1) - self.online_embedding(v2)).pow(2).sum(dim=1).mean()
        loss = base + self.reco_loss(batch)
        self.teacher_after_call.append(
            {k: v.clone() for k, v in self.reco.teacher.copies["encoder"].state_dict().items()}
        )
        # the keys this call enqueued came from the teacher as it is now: it moved first
        bank = self.reco.bank
        rows = (bank.pointer - B + torch.arange(B)) % bank.size
        self.keys_match_teacher.append(
            torch.allclose(
                bank.features[rows], self.reco.teacher_embedding(self, batch["weak"]), atol=1e-6
            )
        )
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class WithTarget(ReCoMixin, L.LightningModule):
    """A user module with a target network of its own (``teacher=auto`` -> ``target``)."""

    def __init__(self, reco: dict, **options) -> None:
        super().__init__()
        self.online = nn.Sequential(nn.Flatten(), nn.Linear(C * S * S, DIM))
        self.target = nn.Sequential(nn.Flatten(), nn.Linear(C * S * S, DIM))
        self.reco = ReCo(reco, DIM, self, **options)

    def online_embedding(self, images):
        return F.normalize(self.online(images), dim=1)

    def target_embedding(self, images):
        return F.normalize(self.target(images), dim=1)


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


def _keys(n: int, seed: int, dim: int = DIM) -> torch.Tensor:
    return F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


def _expected_local(model: WithTarget, v1, v2, negatives: torch.Tensor, seed: int) -> torch.Tensor:
    """The local term by hand: the mixing drawn from ``seed``, scored against ``negatives``."""
    with torch.no_grad():
        q1, k2 = model.online_embedding(v1), model.target_embedding(v2)
        torch.manual_seed(seed)
        mixed = mix_views(v1, v2, "cutmix", 1.0)
        target = interpolation_target(q1, k2[mixed.permutation], mixed.lam)
        z = model.online_embedding(mixed.images)
        logits = torch.cat([(z * target).sum(dim=1, keepdim=True), z @ negatives.T], dim=1) / 0.2
        return F.cross_entropy(logits, torch.zeros(B, dtype=torch.long))


# --------------------------------------------------------------------------- once per step
def test_ema_teacher_moves_once_per_optimizer_step_with_accumulation(monkeypatch):
    """6 micro-batches, accumulate 2: 3 optimizer steps. The teacher moves at the start of
    the first ReCo call after each step (micro-batches 2 and 4; the third step's weights
    would enter only at a 7th call), by a hand-computed EMA, and at no other call."""
    momentum = 0.5
    torch.manual_seed(0)
    model = NoTarget({"bank_size": 16, "negatives_size": 16, "teacher_momentum": momentum})
    assert model.reco.teacher_kind == "ema"
    assert list(model.reco.teacher.copies) == ["encoder"]
    start = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    after_steps: list[dict[str, torch.Tensor]] = []

    class RecordOnlineAfterStep(L.Callback):
        """The online weights after each optimizer step (every 2nd micro-batch)."""

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if (batch_idx + 1) % 2 == 0:
                after_steps.append(
                    {k: v.clone() for k, v in pl_module.encoder.state_dict().items()}
                )

    updates = []
    original = EMATeacher.update

    def counting(self, owner, m, step):
        moved = original(self, owner, m, step)
        updates.append((step, moved))
        return moved

    monkeypatch.setattr(EMATeacher, "update", counting)
    trainer = L.Trainer(
        max_epochs=1,
        accumulate_grad_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[RecordOnlineAfterStep()],
        accelerator="cpu",
    )
    trainer.fit(model, DataLoader(Views(6 * B), batch_size=B))

    assert trainer.global_step == 3 and len(after_steps) == 3
    # called once per ReCo call (per micro-batch), moved once per optimizer step
    assert updates == [(0, False), (0, False), (1, True), (1, False), (2, True), (2, False)]
    ema = lambda old, online: {k: momentum * old[k] + (1 - momentum) * online[k] for k in old}  # noqa: E731
    first = ema(start, after_steps[0])
    second = ema(first, after_steps[1])
    expected_after_call = [start, start, first, first, second, second]
    assert len(model.teacher_after_call) == 6
    for call, (seen, expected) in enumerate(zip(model.teacher_after_call, expected_after_call)):
        for key, value in expected.items():
            assert torch.allclose(seen[key], value, atol=1e-6), (call, key)
    teacher = model.reco.teacher.copies["encoder"].state_dict()
    for key, value in second.items():
        assert torch.allclose(teacher[key], value, atol=1e-6), key
    # the steps really moved the online network, so the EMA is not a plain copy of it
    assert not torch.allclose(after_steps[0]["1.weight"], start["1.weight"])
    assert not torch.allclose(teacher["1.weight"], after_steps[1]["1.weight"])
    assert model.reco.teacher.step_gate.last_step == 2
    assert model.keys_match_teacher == [True] * 6


def test_step_gate_is_saved_and_restored():
    gate = OncePerOptimizerStep()
    assert [gate.due(s) for s in (0, 1, 1, 2)] == [False, True, False, True]
    restored = OncePerOptimizerStep()
    restored.load_state_dict(gate.state_dict())
    assert restored.last_step == 2 and restored.due(2) is False and restored.due(3) is True
    assert all(OncePerOptimizerStep().due(None) for _ in range(3))  # no Trainer: every call


def test_without_a_trainer_every_call_moves_the_teacher():
    torch.manual_seed(0)
    model = WithTarget(
        {"bank_size": 16, "negatives_size": 16, "teacher": "ema", "teacher_momentum": 0.5}
    )
    copy = model.reco.teacher.copies["online"]
    with torch.no_grad():
        model.online[1].weight.add_(1.0)
    before = copy[1].weight.clone()
    model.reco(model, *_batch())  # progress=None: step None
    assert torch.allclose(copy[1].weight, 0.5 * before + 0.5 * model.online[1].weight)


# --------------------------------------------------------------------------- ownership
def _simclr(**reco):
    torch.manual_seed(0)
    return SimCLR(
        num_classes=10,
        backbone_width=8,
        small_stem=True,
        proj_hidden_dim=32,
        proj_output_dim=16,
        reco={"bank_size": 64, "negatives_size": 64, **reco},
    )


def _moved_simclr() -> SimCLR:
    """A SimCLR whose ReCo state differs from a fresh one's everywhere: written queues, a
    teacher moved at step 7."""
    model = _simclr(teacher_momentum=0.5)
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(0.1)
    assert model.reco.teacher.update(model, 0.5, step=7)
    model.reco.bank.enqueue(_keys(10, 1, dim=16))
    model.reco.negatives.enqueue(_keys(6, 2, dim=16))
    return model


def _assert_same_reco_state(a: SimCLR, b: SimCLR) -> None:
    for part in ("bank", "negatives", "teacher"):
        left, right = getattr(a.reco, part).state_dict(), getattr(b.reco, part).state_dict()
        assert left.keys() == right.keys(), part
        for name, value in left.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, right[name]), (part, name)
            else:
                assert value == right[name], (part, name)
    assert b.reco.teacher.step_gate.last_step == 7
    assert b.reco.bank.num_filled() == 10 and b.reco.negatives.num_filled() == 6


def test_simclr_teacher_is_in_the_checkpoint_and_comes_back():
    model = _moved_simclr()
    state = model.state_dict()
    assert set(model.reco.teacher.copies) == {
        "backbone",
        "projector",
    }  # the online probe is no part of it

    fresh = _simclr(teacher_momentum=0.5)
    assert fresh.reco.teacher.step_gate.last_step == 0
    assert not torch.equal(
        fresh.reco.teacher.copies["backbone"].conv1.weight,
        model.reco.teacher.copies["backbone"].conv1.weight,
    )
    fresh.load_state_dict(state)
    _assert_same_reco_state(model, fresh)
    # the restored gate does not move the teacher again for step 7
    assert not fresh.reco.teacher.update(fresh, 0.5, step=7)
    # and the restored teacher is a moved copy, not the online network
    w_teacher = fresh.reco.teacher.copies["backbone"].conv1.weight
    assert not torch.equal(w_teacher, fresh.backbone.conv1.weight)


def test_simclr_teacher_gets_no_gradient_and_is_not_optimised():
    model = _simclr()
    generator = torch.Generator().manual_seed(0)
    batch = {
        "strong": [torch.randn(B, 3, 16, 16, generator=generator) for _ in range(2)],
        "weak": torch.randn(B, 3, 16, 16, generator=generator),
        "label": torch.randint(10, (B,)),
    }
    for queue in (model.reco.bank, model.reco.negatives):
        queue.enqueue(F.normalize(torch.randn(queue.size, 16), dim=1))
    calls = []
    model.reco.register_forward_hook(lambda module, args, output: calls.append(output))
    model.training_step(batch, 0).backward()
    assert (
        len(calls) == 1 and calls[0].global_ is not None and calls[0].local is not None
    )  # ReCo did run
    teacher_params = list(model.reco.teacher.parameters())
    assert teacher_params and all(p.grad is None and not p.requires_grad for p in teacher_params)
    assert any(p.grad is not None for p in model.backbone.parameters())
    optimised = {id(p) for group in model.parameter_groups() for p in group["params"]}
    assert not optimised & {id(p) for p in teacher_params}
    assert {id(p) for p in model.backbone.parameters()} <= optimised


def test_teacher_moves_with_the_module():
    model = _simclr().to(torch.float64)
    assert model.reco.teacher.copies["backbone"].conv1.weight.dtype == torch.float64
    assert model.reco.teacher.copies["projector"].state_dict()["0.weight"].dtype == torch.float64
    model.eval()
    keys = model.reco.teacher_embedding(model, torch.randn(2, 3, 16, 16, dtype=torch.float64))
    assert keys.dtype == torch.float64


# --------------------------------------------------------------------------- which teacher
@pytest.mark.parametrize("cls, kind", [(MoCo, "target"), (BYOL, "target"), (SimCLR, "ema")])
def test_auto_uses_the_methods_target_where_it_has_one(cls, kind):
    sizes = dict(proj_hidden_dim=32, proj_output_dim=16)
    if cls is BYOL:
        sizes["pred_hidden_dim"] = 32
    model = cls(
        num_classes=10,
        backbone_width=8,
        small_stem=True,
        reco={"bank_size": 64, "negatives_size": 64},
        **sizes,
    )
    assert model.reco.teacher_kind == kind
    assert (model.reco.teacher is not None) is (kind == "ema")


def test_auto_target_embedding_is_used_when_the_module_has_one(monkeypatch):
    model = MoCo(
        num_classes=10,
        backbone_width=8,
        small_stem=True,
        proj_hidden_dim=32,
        proj_output_dim=16,
        queue_size=64,
        reco={"bank_size": 64},
    )
    calls = []
    original = MoCo.target_embedding
    monkeypatch.setattr(
        MoCo, "target_embedding", lambda self, x: calls.append(x) or original(self, x)
    )
    v1, v2, w = (torch.randn(B, 3, 16, 16) for _ in range(3))
    model.reco(model, v1, v2, w, negatives=_keys(B, 3, dim=16))
    assert len(calls) == 2 and calls[0] is v2 and calls[1] is w  # v2 and the weak view
    assert torch.allclose(model.reco.bank.filled(), original(model, w), atol=1e-6)


@pytest.mark.parametrize("choice, kind", [("ema", "ema"), ("online", "online")])
def test_teacher_setting_overrides_auto(choice, kind, monkeypatch):
    model = MoCo(
        num_classes=10,
        backbone_width=8,
        small_stem=True,
        proj_hidden_dim=32,
        proj_output_dim=16,
        queue_size=64,
        reco={"bank_size": 64, "teacher": choice},
    )
    assert model.reco.teacher_kind == kind
    assert (model.reco.teacher is not None) is (kind == "ema")
    monkeypatch.setattr(
        MoCo, "target_embedding", lambda self, x: pytest.fail("the target was used")
    )
    model.eval()
    model.reco.teacher_embedding(model, torch.randn(2, 3, 16, 16))


# --------------------------------------------------------------------------- which mixing
def _method(cls, reco: dict):
    sizes = dict(proj_hidden_dim=32, proj_output_dim=16)
    if cls in (BYOL, SimSiam):
        sizes["pred_hidden_dim"] = 32
    if cls is MoCo:
        sizes["queue_size"] = 64
    return cls(
        num_classes=10,
        backbone_width=8,
        small_stem=True,
        reco={"bank_size": 64, "negatives_size": 64, **reco},
        **sizes,
    )


@pytest.mark.parametrize(
    "cls, setting, used",
    [
        (BYOL, "auto", "mixup"),
        (MoCo, "auto", "mixup"),
        (SimCLR, "auto", "mixup"),  # each one's validation chose Mixup
        (SimSiam, "auto", "cutmix"),  # the paper's, for the methods validation did not tune
        (BYOL, "cutmix", "cutmix"),
        (MoCo, "cutmix", "cutmix"),
        (SimCLR, "cutmix", "cutmix"),
        (SimSiam, "mixup", "mixup"),
    ],
)
def test_mix_auto_is_the_methods_choice_and_a_setting_overrides_it(cls, setting, used, monkeypatch):
    model = _method(cls, {"mix": setting, "warmup_epochs": 0})
    modes = []
    monkeypatch.setattr(
        reco_module,
        "mix_views",
        lambda a, b, mode, alpha: modes.append(mode) or mix_views(a, b, mode, alpha),
    )
    v1, v2, w = (torch.randn(B, 3, 16, 16) for _ in range(3))
    negatives = _keys(B, 3, dim=16) if cls is MoCo else None
    for _ in range(2):  # the first call only fills the banks
        model.reco(model, v1, v2, w, negatives=negatives)
    assert modes and set(modes) == {used}


class BatchNegativesSimCLR(SimCLR):
    """A method whose own choice is batch negatives (as a validation choice would set it)."""

    reco_negatives = "batch"


@pytest.mark.parametrize(
    "cls, setting, used",
    [
        (SimCLR, "auto", "queue"),
        (BYOL, "auto", "queue"),
        (MoCo, "auto", "queue"),
        (BatchNegativesSimCLR, "auto", "batch"),
        (BatchNegativesSimCLR, "queue", "queue"),
        (SimCLR, "batch", "batch"),
    ],
)
def test_negatives_auto_is_the_methods_choice_and_a_setting_overrides_it(cls, setting, used):
    model = _method(cls, {"negatives": setting, "warmup_epochs": 0})
    assert model.reco.negatives_kind == used
    # a queue of its own only for queue negatives that the method does not lend (MoCo's)
    assert (model.reco.negatives is not None) == (used == "queue" and cls is not MoCo)
    assert model.reco.borrows_negatives == (used == "queue" and cls is MoCo)
    v1, v2, w = (torch.randn(B, 3, 16, 16) for _ in range(3))
    lent = _keys(B, 3, dim=16) if cls is MoCo else None
    terms = [model.reco(model, v1, v2, w, negatives=lent) for _ in range(2)]
    # batch negatives score from the first call; a queue of its own is empty until then
    assert terms[0].local_skipped == (used == "queue" and cls is not MoCo)
    assert not terms[1].local_skipped


def test_an_unknown_owner_negatives_is_named():
    with pytest.raises(ConfigError, match="the owner's negatives must be one of"):
        ReCo({"bank_size": 16}, embedding_dim=8, owner=nn.Linear(2, 2), negatives="bank")


def test_an_unknown_mix_is_named():
    with pytest.raises(
        ConfigError,
        match=r"reco.mix='blend' is unknown: choose one of \['auto', 'cutmix', 'mixup'\]",
    ):
        ReCoConfig(mix="blend")
    with pytest.raises(ConfigError, match="the owner's mixing"):
        ReCo({"bank_size": 16}, embedding_dim=8, owner=nn.Linear(2, 2), mix="blend")


def test_online_teacher_scores_against_the_online_network():
    model = _simclr(teacher="online")
    assert model.reco.teacher is None
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(0.05)
    images = torch.randn(B, 3, 16, 16)
    model.eval()
    keys = model.reco.teacher_embedding(model, images)
    assert not keys.requires_grad
    assert torch.allclose(keys, model.online_embedding(images), atol=1e-6)


def test_unknown_teacher_and_negatives_are_named():
    with pytest.raises(ConfigError, match=r"reco\.teacher"):
        ReCoConfig(teacher="student")
    with pytest.raises(ConfigError, match=r"reco\.negatives"):
        ReCoConfig(negatives="bank")
    with pytest.raises(ConfigError, match=r"reco\.teacher_momentum"):
        ReCoConfig(teacher_momentum=1.5)
    with pytest.raises(ConfigError, match=r"reco\.warmup_epochs"):
        ReCoConfig(warmup_epochs=-1)
    # and through the module, from a plain mapping
    with pytest.raises(ConfigError, match=r"reco\.teacher='student'"):
        WithTarget({"bank_size": 16, "teacher": "student"})
    with pytest.raises(ConfigError, match=r"reco\.negatives='bank'"):
        WithTarget({"bank_size": 16, "negatives": "bank"})


# --------------------------------------------------------------------------- written rows only
def test_half_filled_queues_score_only_their_written_rows():
    torch.manual_seed(0)
    model = WithTarget({"bank_size": 16, "negatives_size": 16})
    assert model.reco.teacher_kind == "target"
    model.reco.bank.enqueue(_keys(8, 1))
    model.reco.negatives.enqueue(_keys(8, 2))
    whole_bank_rows = model.reco.bank.features.clone()
    v1, v2, w = _batch()
    torch.manual_seed(5)
    terms = model.reco(model, v1, v2, w)
    with torch.no_grad():
        q1, weak = model.online_embedding(v1), model.target_embedding(w)
        # by hand: only the 8 written rows, never the 8 random start-up rows
        bank = _keys(8, 1)
        p_t = F.softmax(weak @ bank.T / 0.04, dim=1)
        expected_global = -(p_t * F.log_softmax(q1 @ bank.T / 0.1, dim=1)).sum(dim=1).mean()
        expected_local = _expected_local(model, v1, v2, _keys(8, 2), seed=5)
        whole_bank = global_relation_loss(q1, weak, whole_bank_rows)
    assert terms.global_.item() == pytest.approx(expected_global.item(), rel=1e-5)
    assert terms.local.item() == pytest.approx(expected_local.item(), rel=1e-5)
    assert terms.weighted.item() == pytest.approx((terms.global_ + terms.local).item(), rel=1e-6)
    assert terms.global_.item() != pytest.approx(whole_bank.item(), rel=1e-3)  # the test can tell
    # this step's keys went in after scoring, in the same call
    assert (
        int(model.reco.bank.num_enqueued) == 8 + B
        and int(model.reco.negatives.num_enqueued) == 8 + B
    )
    with torch.no_grad():
        assert torch.allclose(model.reco.bank.features[8 : 8 + B], weak, atol=1e-6)
        assert torch.allclose(
            model.reco.negatives.features[8 : 8 + B], model.target_embedding(v2), atol=1e-6
        )


@pytest.mark.parametrize("short", ["bank", "negatives"])
def test_a_queue_with_fewer_rows_than_a_batch_skips_its_term(short):
    torch.manual_seed(0)
    model = WithTarget({"bank_size": 16, "negatives_size": 16})
    model.reco.bank.enqueue(_keys(B - 1 if short == "bank" else B, 1))  # one short of a batch
    model.reco.negatives.enqueue(_keys(B - 1 if short == "negatives" else B, 2))
    terms = model.reco(model, *_batch())
    if short == "bank":
        assert terms.global_ is None and terms.global_skipped
        assert terms.local is not None and not terms.local_skipped
        assert terms.weighted.item() == pytest.approx(terms.local.item())
    else:
        assert terms.local is None and terms.local_skipped and terms.lam is None
        assert terms.global_ is not None and not terms.global_skipped
        assert terms.weighted.item() == pytest.approx(terms.global_.item())


def test_a_term_needs_a_whole_global_batch_of_rows():
    """Under DDP a step enqueues world_size * B keys: fewer written rows skip the term."""
    torch.manual_seed(0)
    model = WithTarget({"bank_size": 16, "negatives_size": 16})
    model.reco.bank.enqueue(_keys(2 * B - 1, 1))
    model.reco.negatives.enqueue(_keys(2 * B, 2))
    terms = model.reco(model, *_batch(), progress=TrainingProgress(world_size=2))
    assert terms.global_skipped and terms.local is not None
    # the same rows are enough for one rank's batch
    torch.manual_seed(0)
    model = WithTarget({"bank_size": 16, "negatives_size": 16})
    model.reco.bank.enqueue(_keys(2 * B - 1, 1))
    terms = model.reco(model, *_batch(), progress=TrainingProgress(world_size=1))
    assert terms.global_ is not None


def test_batch_negatives_leave_out_own_and_partner_keys(monkeypatch):
    torch.manual_seed(0)
    model = WithTarget({"bank_size": 16, "negatives": "batch"})
    assert model.reco.negatives is None
    model.reco.bank.enqueue(_keys(16, 1))
    permutation = torch.tensor([1, 2, 3, 0])
    real_mix = mix_views

    def fixed_mix(first, second, mode, alpha):
        mixed = real_mix(first, second, mode, alpha)
        lam = 0.75
        return type(mixed)(lam * first + (1 - lam) * second[permutation], permutation, lam)

    monkeypatch.setattr(reco_module, "mix_views", fixed_mix)
    v1, v2, w = _batch()
    terms = model.reco(model, v1, v2, w)
    assert terms.lam == 0.75
    with torch.no_grad():
        q1, k2 = model.online_embedding(v1), model.target_embedding(v2)
        target = interpolation_target(q1, k2[permutation], 0.75)
        z = model.online_embedding(0.75 * v1 + 0.25 * v2[permutation])
        rows, all_keys = [], []
        for i in range(B):
            others = [j for j in range(B) if j not in (i, int(permutation[i]))]
            logits = torch.cat([(z[i] * target[i]).sum().view(1), z[i] @ k2[others].T]) / 0.2
            rows.append(-F.log_softmax(logits, dim=0)[0])
            logits = torch.cat([(z[i] * target[i]).sum().view(1), z[i] @ k2.T]) / 0.2
            all_keys.append(-F.log_softmax(logits, dim=0)[0])
        expected = torch.stack(rows).mean()
        unmasked = torch.stack(all_keys).mean()
    assert terms.local.item() == pytest.approx(expected.item(), rel=1e-5)
    assert terms.local.item() != pytest.approx(unmasked.item(), rel=1e-3)  # the test can tell
    # nothing is enqueued as negatives (the batch is its own set); the bank got the weak keys
    assert int(model.reco.bank.num_enqueued) == 16 + B


def test_a_lent_queue_counts_only_its_written_rows():
    """A ReCo built with ``borrows_negatives`` keeps no queue: it scores the local term
    against exactly the rows lent to the call, and writes nothing into the lender's."""
    torch.manual_seed(0)
    lent = FeatureQueue(16, DIM)
    lent.enqueue(_keys(6, 3))
    model = WithTarget({"bank_size": 16}, borrows_negatives=True)
    assert model.reco.negatives is None and model.reco.borrows_negatives
    assert not any(k.startswith("reco.negatives.") for k in model.state_dict())
    assert lent.filled().shape[0] == 6 and torch.equal(lent.filled(), _keys(6, 3))
    v1, v2, w = _batch()
    whole_queue = _expected_local(model, v1, v2, lent.features, seed=5)
    torch.manual_seed(5)
    terms = model.reco(model, v1, v2, w, negatives=lent.filled().clone())
    expected = _expected_local(model, v1, v2, _keys(6, 3), seed=5)
    assert terms.local.item() == pytest.approx(expected.item(), rel=1e-5)
    assert terms.local.item() != pytest.approx(whole_queue.item(), rel=1e-3)  # the test can tell
    assert int(lent.num_enqueued) == 6  # the lender enqueues its own keys
    # fewer lent rows than a batch: the local term is skipped
    short = model.reco(model, v1, v2, w, negatives=_keys(B - 1, 3))
    assert short.local is None and short.local_skipped
    with pytest.raises(RuntimeError, match="negatives="):
        model.reco(model, v1, v2, w)


def test_moco_lends_the_written_rows_of_its_queue_from_before_the_step():
    torch.manual_seed(0)
    model = MoCo(
        num_classes=10,
        backbone_width=8,
        small_stem=True,
        proj_hidden_dim=32,
        proj_output_dim=16,
        queue_size=64,
        reco={"bank_size": 64},
    )
    assert model.reco.negatives is None and model.reco.borrows_negatives
    model.queue.enqueue(_keys(6, 3, dim=16))
    lent = []
    model.reco.register_forward_pre_hook(
        lambda module, args, kwargs: lent.append(kwargs["negatives"]), with_kwargs=True
    )
    generator = torch.Generator().manual_seed(0)
    batch = {
        "strong": [torch.randn(B, 3, 16, 16, generator=generator) for _ in range(2)],
        "weak": torch.randn(B, 3, 16, 16, generator=generator),
        "label": torch.randint(10, (B,)),
    }
    model.training_step(batch, 0)
    assert len(lent) == 1 and torch.equal(
        lent[0], _keys(6, 3, dim=16)
    )  # not the 58 random rows, not this step's keys
    assert int(model.queue.num_enqueued) == 6 + B


# --------------------------------------------------------------------------- warm-up
def test_warmup_weights_follow_the_schedule():
    torch.manual_seed(0)
    model = WithTarget({"bank_size": 16, "w_global": 2.0, "w_local": 0.5, "warmup_epochs": 1.5})
    # 10 optimizer steps per epoch (100 in 10 epochs): warm-up over 15 steps
    expected = {0: 0.0, 3: 0.2, 6: 0.4, 15: 1.0, 40: 1.0}
    for now, scale in expected.items():
        w_global, w_local = model.reco.weights(TrainingProgress(now, 100, 10))
        assert w_global == pytest.approx(2.0 * scale) and w_local == pytest.approx(0.5 * scale), now
    assert model.reco.weights(TrainingProgress()) == (2.0, 0.5)  # no Trainer: full weights
    no_warmup = WithTarget({"bank_size": 16, "w_global": 2.0, "warmup_epochs": 0})
    assert no_warmup.reco.weights(TrainingProgress(0, 100, 10)) == (2.0, 1.0)


class NoWarmupSimCLR(SimCLR):
    """A method whose own choice is no warm-up (as a validation choice would set it)."""

    reco_warmup_epochs = 0.0


@pytest.mark.parametrize(
    "cls, setting, full_from_step",
    [
        (SimCLR, None, 20),  # the built-in methods' warm-up: 2 epochs of 10 steps
        (MoCo, None, 0),  # MoCo's validation chose none
        (MoCo, 2.0, 20),
        (BYOL, None, 0),  # nor did BYOL's
        (BYOL, 1.0, 10),
        (NoWarmupSimCLR, None, 0),
        (NoWarmupSimCLR, 1.0, 10),  # a user's setting overrides the method's
        (SimCLR, 0.0, 0),
    ],
)
def test_warmup_null_is_the_methods_choice_and_a_setting_overrides_it(cls, setting, full_from_step):
    model = _method(cls, {"warmup_epochs": setting})
    scales = [model.reco.weights(TrainingProgress(step, 100, 10))[0] for step in range(25)]
    first_full = scales.index(1.0)
    assert first_full == full_from_step and all(s < 1.0 for s in scales[:first_full])


class GlobalOnlySimCLR(SimCLR):
    """A method whose own weights drop the local term (as a validation choice would set it)."""

    reco_weights = (1.0, 0.0)


@pytest.mark.parametrize(
    "cls, setting, weights",
    [
        (SimCLR, {}, (1.0, 1.0)),  # every built-in method's: RECO.md's
        (GlobalOnlySimCLR, {}, (1.0, 0.0)),
        (GlobalOnlySimCLR, {"w_local": 0.5}, (1.0, 0.5)),  # a user's setting overrides it
        (SimCLR, {"w_global": 2.0, "w_local": None}, (2.0, 1.0)),
    ],
)
def test_null_weights_are_the_methods_and_a_setting_overrides_them(cls, setting, weights):
    model = _method(cls, {"warmup_epochs": 0, **setting})
    assert model.reco.weights(TrainingProgress(5, 100, 10)) == weights
    v1, v2, w = (torch.randn(B, 3, 16, 16) for _ in range(3))
    terms = [model.reco(model, v1, v2, w, progress=TrainingProgress(s, 100, 10)) for s in (0, 1)]
    # a weight of 0 computes no term; both are scored once the banks hold a batch
    assert (terms[1].global_ is None, terms[1].local is None) == (False, weights[1] == 0)
    assert (terms[1].w_global, terms[1].w_local) == weights


class OnlineTeacherSimCLR(SimCLR):
    """A method whose own teacher is the online network (as a validation choice would set)."""

    reco_teacher = "online"


@pytest.mark.parametrize(
    "cls, setting, kind",
    [
        (SimCLR, "auto", "ema"),  # no target network: ReCo's EMA copy
        (MoCo, "auto", "target"),
        (OnlineTeacherSimCLR, "auto", "online"),
        (OnlineTeacherSimCLR, "ema", "ema"),  # a user's setting overrides the method's
    ],
)
def test_teacher_auto_is_the_methods_choice_and_a_setting_overrides_it(cls, setting, kind):
    model = _method(cls, {"teacher": setting})
    assert model.reco.teacher_kind == kind
    assert (model.reco.teacher is not None) == (kind == "ema")
    if kind == "online":  # the targets are the online network's own embeddings
        images = torch.randn(B, 3, 16, 16)
        with torch.no_grad():
            expected = model.online_embedding(images)
        assert torch.allclose(model.reco.teacher_embedding(model, images), expected)


@pytest.mark.parametrize(
    "options, named",
    [
        ({"weights": (1.0, -1.0)}, "the owner's weights must be two numbers >= 0"),
        ({"weights": (1.0,)}, "the owner's weights must be two numbers >= 0"),
        ({"teacher": "target"}, "the owner's teacher must be one of"),
    ],
)
def test_an_owners_bad_weights_or_teacher_is_named(options, named):
    with pytest.raises(ConfigError, match=named):
        ReCo({"bank_size": 16}, embedding_dim=8, owner=nn.Linear(2, 2), **options)


def test_training_progress_counts_optimizer_steps_per_epoch():
    """20 micro-batches an epoch, accumulate 2: 10 optimizer steps an epoch."""
    trainer = SimpleNamespace(
        estimated_stepping_batches=100,
        num_training_batches=20,
        accumulate_grad_batches=2,
        global_step=3,
        world_size=2,
        max_epochs=10,
    )
    assert training_progress(SimpleNamespace(_trainer=trainer)) == TrainingProgress(3, 100, 10, 2)
    unknown = SimpleNamespace(**{**vars(trainer), "num_training_batches": math.inf})
    assert training_progress(SimpleNamespace(_trainer=unknown)) == TrainingProgress(3, 100, 10, 2)
    assert training_progress(SimpleNamespace(_trainer=None)) == TrainingProgress()


def test_warmup_weight_zero_adds_nothing(monkeypatch):
    torch.manual_seed(0)
    model = WithTarget({"bank_size": 16, "negatives_size": 16, "warmup_epochs": 1})
    model.reco.bank.enqueue(_keys(16, 1))
    model.reco.negatives.enqueue(_keys(16, 2))
    terms = model.reco(model, *_batch(), progress=TrainingProgress(0, 100, 10))
    assert terms.global_ is None and terms.local is None and terms.weighted.item() == 0.0
    assert (terms.w_global, terms.w_local) == (0.0, 0.0)
    assert not terms.global_skipped and not terms.local_skipped  # not skipped: not due
    assert int(model.reco.bank.num_enqueued) == 16 + B  # the bank still fills during the warm-up
    # through the mixin, which reads the step from the Trainer
    monkeypatch.setattr(
        mixin_module, "training_progress", lambda module: TrainingProgress(0, 100, 10)
    )
    loss = model.reco_loss(_batch(1))
    assert loss.item() == 0.0
    monkeypatch.setattr(
        mixin_module, "training_progress", lambda module: TrainingProgress(5, 100, 10)
    )
    assert model.reco_loss(_batch(1)).item() > 0
    terms = model.reco(model, *_batch(), progress=TrainingProgress(5, 100, 10))
    assert (terms.w_global, terms.w_local) == (0.5, 0.5)
    assert terms.weighted.item() == pytest.approx(
        0.5 * (terms.global_ + terms.local).item(), rel=1e-6
    )


class ProbedImageNet(L.LightningModule):
    """A user module with an encoder, a head, a probe and an unused spare network: only the
    encoder and the head make the embedding."""

    def __init__(self, reco: dict | None = None, example: torch.Tensor | None = None):
        super().__init__()
        if example is not None:
            self.example_input_array = example
        self.encoder = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4, 8)
        self.probe = nn.Linear(4, 10)
        self.spare = nn.Linear(4, 4)
        self.reco = ReCo.from_settings(reco or {"bank_size": 16}, 8, self)

    def online_embedding(self, x):
        return F.normalize(self.head(self.encoder(x)), dim=1)


def test_ema_teacher_copies_only_what_the_embedding_runs_through():
    net = ProbedImageNet()
    assert list(net.reco.teacher.copies) == ["encoder", "head"]  # no probe, no spare
    assert all(module.training for module in net.modules())  # the trace left modes alone


def test_the_owners_example_input_decides_the_traced_modules():
    net = ProbedImageNet(example=torch.zeros(1, 3, 8, 8))
    assert list(net.reco.teacher.copies) == ["encoder", "head"]


def test_an_embedding_the_example_cannot_run_copies_every_trainable_child():
    """Vectors, not images: the 3x32x32 example fails, so every trainable child is copied
    (documented); with an example_input_array of its inputs the probe is left out."""

    class VectorNet(L.LightningModule):
        def __init__(self, example=None):
            super().__init__()
            if example is not None:
                self.example_input_array = example
            self.encoder, self.probe = nn.Linear(6, 8), nn.Linear(8, 2)
            self.reco = ReCo({"bank_size": 16}, 8, self)

        def online_embedding(self, x):
            return F.normalize(self.encoder(x), dim=1)

    assert list(VectorNet().reco.teacher.copies) == ["encoder", "probe"]
    assert list(VectorNet(torch.zeros(2, 6)).reco.teacher.copies) == ["encoder"]
