"""Four bugs that the rest of the suite let through (each was introduced on purpose and
passed it): a CutMix box with height and width swapped, BYOL's online embedding without
its predictor, ReCo's EMA teacher replaced by the method's ``k2`` after step 0, and the
warm-up applied to the method loss. Each test here fails on its bug."""

from __future__ import annotations

import csv
import warnings

import pytest
import torch
import torch.nn.functional as F

from reco_lightning.methods import BYOL, SimCLR
from reco_lightning.reco import TrainingProgress, mixing
from reco_lightning.reco.mixing import cutmix_box, mix_views
from reco_lightning.run.train import train

RECO = {"bank_size": 64, "negatives_size": 64}
TINY = dict(
    num_classes=10, backbone_width=8, small_stem=True, proj_hidden_dim=32, proj_output_dim=16
)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():  # self.log without a Trainer only warns
        warnings.simplefilter("ignore")
        yield


def _fill(model) -> None:
    """Write ReCo's queues whole, so both terms are computed from the first call."""
    for queue in (model.reco.bank, model.reco.negatives):
        if queue is not None:
            queue.enqueue(F.normalize(torch.randn(queue.size, queue.features.shape[1]), dim=1))


# ----------------------------------------------------------------- CutMix on non-square images
def test_cutmix_box_on_a_wide_image_cuts_rows_by_height_and_columns_by_width(monkeypatch):
    centres = iter([4, 16])  # y drawn first (below the height 8), then x (below the width 32)
    monkeypatch.setattr(torch, "randint", lambda high, size, **kw: torch.tensor([next(centres)]))
    # lam .75: each side keeps sqrt(.25) = half of its own length: 4 rows and 16 columns
    assert cutmix_box(8, 32, 0.75) == (2, 6, 8, 24)


@pytest.mark.parametrize("height, width", [(8, 32), (32, 8), (12, 20)])
def test_cutmix_lambda_is_the_share_of_first_on_non_square_images(monkeypatch, height, width):
    monkeypatch.setattr(mixing, "sample_lambda", lambda alpha: 0.6)
    unclipped = 0
    for seed in range(50):
        torch.manual_seed(seed)
        mixed = mix_views(
            torch.zeros(2, 3, height, width), torch.ones(2, 3, height, width), "cutmix"
        )
        top, bottom, left, right = mixed.box
        assert 0 <= top <= bottom <= height and 0 <= left <= right <= width
        assert (mixed.images == 0).float().mean().item() == pytest.approx(mixed.lam)
        if 0 < top and bottom < height and 0 < left and right < width:  # unclipped: the drawn area
            unclipped += 1
            # each side is about sqrt(.4) of its own length, rounded down to an even count
            assert (
                abs((bottom - top) - 0.632 * height) <= 2
                and abs((right - left) - 0.632 * width) <= 2
            )
    assert unclipped > 0


# --------------------------------------------------------------------------- BYOL's predictor
def test_byol_online_embedding_runs_through_its_predictor():
    torch.manual_seed(0)
    model = BYOL(pred_hidden_dim=32, **TINY)
    x = torch.randn(4, 3, 16, 16)
    projected = model.projector(model.backbone(x))
    assert torch.allclose(model.online_embedding(x), F.normalize(model.predictor(projected), dim=1))
    assert not torch.allclose(model.online_embedding(x), F.normalize(projected, dim=1), atol=1e-3)


def test_byols_local_term_trains_the_predictor():
    """The local term's gradient comes only through ``online_embedding(mixed)`` (its target
    and negatives are detached), so it reaches the predictor only through the embedding."""
    torch.manual_seed(0)
    model = BYOL(pred_hidden_dim=32, reco={**RECO, "w_global": 0.0}, **TINY)
    _fill(model)
    v1, v2, weak = (torch.randn(4, 3, 16, 16) for _ in range(3))
    terms = model.reco(
        model, v1, v2, weak, q1=model.online_embedding(v1), k2=model.target_embedding(v2)
    )
    assert terms.local is not None and terms.global_ is None
    terms.local.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.predictor.parameters())


# ---------------------------------------------------------------- the EMA teacher after step 0
@pytest.mark.parametrize("step", [0, 1, 7])
def test_simclr_reco_takes_k2_from_its_own_teacher_at_every_step(step):
    """SimCLR passes its online ``z2`` as ``k2``; ReCo's own EMA teacher must compute its own,
    at step 0 (when the two are equal) and after it (when they are not)."""
    torch.manual_seed(0)
    model = SimCLR(reco=RECO, **TINY)
    _fill(model)
    with torch.no_grad():  # the teacher has moved away from the online network, as in training
        for parameter in model.reco.teacher.parameters():
            parameter.add_(0.5 * torch.randn_like(parameter))
    enqueued = []
    original = model.reco.negatives.enqueue
    model.reco.negatives.enqueue = lambda keys, gather=True: (
        enqueued.append(keys.clone()) or original(keys, gather)
    )
    v1, v2, weak = (torch.randn(4, 3, 16, 16) for _ in range(3))
    online_z2 = model.online_embedding(v2).detach()
    progress = TrainingProgress(step=step, total_steps=20, steps_per_epoch=10)
    model.reco(model, v1, v2, weak, q1=model.online_embedding(v1), k2=online_z2, progress=progress)
    teacher_k2 = F.normalize(
        model.reco.teacher.embed(model, v2), dim=1
    )  # the teacher as the call left it
    assert torch.allclose(enqueued[-1], teacher_k2, atol=1e-5)
    assert not torch.allclose(enqueued[-1], online_z2, atol=1e-2)


# ---------------------------------------------------------------- the warm-up weighs ReCo only
def test_the_warmup_scales_recos_terms_and_never_the_method_loss(compose_config, tiny, tmp_path):
    """Through the Trainer (the warm-up needs one): at step s of a 3-step warm-up the loss is
    ``loss_method + (s / 3) * (loss_global + loss_local)``; at step 0 it is the method's alone."""
    cfg = compose_config(
        "+method=moco", "+reco=on", *tiny, "reco.warmup_epochs=1", "trainer.log_every_n_steps=1"
    )
    train(cfg, tmp_path)
    with open(tmp_path / "metrics.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("train/loss_step")]
    assert len(rows) == 3
    for row in rows:
        step = int(row["step"])
        terms = sum(
            float(row[key])
            for key in ("train/loss_global_step", "train/loss_local_step")
            if row.get(key)
        )
        expected = float(row["train/loss_method_step"]) + step / 3 * terms
        assert float(row["train/loss_step"]) == pytest.approx(expected, rel=1e-4), f"step {step}"
    assert float(rows[0]["train/loss_step"]) == pytest.approx(
        float(rows[0]["train/loss_method_step"]), rel=1e-5
    )
    assert any(
        row.get("train/loss_local_step") for row in rows[1:]
    )  # the terms were scored after step 0
