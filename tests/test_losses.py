"""Hand-computed checks of the base losses, ReCo's relation terms and the kNN monitor.

Every expected value below is written out with plain ``math.exp`` / ``math.log`` from the
dot products of tiny, explicit 2-d embeddings; torch's own cross-entropy is never used to
produce an expected value.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from reco_lightning.losses.instance import byol_loss, info_nce_loss, nt_xent_loss
from reco_lightning.losses.relation import (
    global_relation_loss,
    interpolation_target,
    local_interpolation_loss,
)
from reco_lightning.metrics.knn import knn_accuracy, weighted_knn_scores


def weighted_knn_predict(*args, **kwargs):
    """The class with most weighted votes."""
    return weighted_knn_scores(*args, **kwargs).argmax(dim=1)


# --------------------------------------------------------------------------- helpers
def _ce(positive_logit: float, other_logits: list[float]) -> float:
    """-log softmax of the positive logit among (positive, *others), by hand."""
    denominator = math.exp(positive_logit) + sum(math.exp(x) for x in other_logits)
    return -math.log(math.exp(positive_logit) / denominator)


def _softmax(logits: list[float]) -> list[float]:
    exps = [math.exp(x) for x in logits]
    total = sum(exps)
    return [e / total for e in exps]


def _t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# --------------------------------------------------------------------------- InfoNCE
def test_info_nce_by_hand():
    temperature = 0.5
    query = _t([[1.0, 0.0], [0.0, 1.0]])
    positive = _t([[0.6, 0.8], [0.8, 0.6]])
    negatives = _t([[0.0, 1.0], [-1.0, 0.0]])
    # query 0: q.p = 0.6, q.n1 = 0, q.n2 = -1   -> logits 1.2, 0, -2
    # query 1: q.p = 0.6, q.n1 = 1, q.n2 = 0    -> logits 1.2, 2, 0
    expected = (_ce(1.2, [0.0, -2.0]) + _ce(1.2, [2.0, 0.0])) / 2
    loss = info_nce_loss(query, positive, negatives, temperature)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_info_nce_temperature_matters():
    query = _t([[1.0, 0.0]])
    positive = _t([[0.6, 0.8]])
    negatives = _t([[0.0, 1.0], [-1.0, 0.0]])
    # temperature 0.1: logits 6, 0, -10
    assert info_nce_loss(query, positive, negatives, 0.1).item() == pytest.approx(
        _ce(6.0, [0.0, -10.0]), rel=1e-4, abs=1e-7
    )


# --------------------------------------------------------------------------- NT-Xent
def _nt_xent_reference_inputs():
    a, b = [1.0, 0.0], [0.0, 1.0]  # view 1 of images 0, 1
    c, d = [0.8, 0.6], [0.6, 0.8]  # view 2 of images 0, 1
    return _t([a, b]), _t([c, d])


def test_nt_xent_by_hand_two_images():
    temperature = 0.5
    z1, z2 = _nt_xent_reference_inputs()
    # pairwise dots: a.b=0, a.c=.8, a.d=.6, b.c=.6, b.d=.8, c.d=.96; self pairs excluded
    # row a: positive c (.8), others b (0), d (.6)
    # row b: positive d (.8), others a (0), c (.6)
    # row c: positive a (.8), others b (.6), d (.96)
    # row d: positive b (.8), others a (.6), c (.96)
    t = temperature
    expected = (
        _ce(0.8 / t, [0.0 / t, 0.6 / t])
        + _ce(0.8 / t, [0.0 / t, 0.6 / t])
        + _ce(0.8 / t, [0.6 / t, 0.96 / t])
        + _ce(0.8 / t, [0.6 / t, 0.96 / t])
    ) / 4
    loss = nt_xent_loss(z1, z2, temperature)
    assert loss.item() == pytest.approx(expected, rel=1e-6)

    # the value a (wrong) loss that keeps the self-similarity (1/t) in the denominator gives
    with_self = (
        2 * _ce(0.8 / t, [1.0 / t, 0.0, 0.6 / t]) + 2 * _ce(0.8 / t, [1.0 / t, 0.6 / t, 0.96 / t])
    ) / 4
    assert abs(loss.item() - with_self) > 1e-2


def test_nt_xent_positive_is_the_other_view():
    # swapping the second views of the two images changes which pair is positive
    z1, z2 = _nt_xent_reference_inputs()
    t = 0.5
    swapped = nt_xent_loss(z1, z2.flip(0), t)
    # now row a: positive d (.6), others b (0), c (.8); row b: positive c (.6), others a (0), d (.8)
    # row d (= view 2 of image 0): positive a (.6), others b (.8), c (.96); row c symmetric
    expected = (2 * _ce(0.6 / t, [0.0, 0.8 / t]) + 2 * _ce(0.6 / t, [0.8 / t, 0.96 / t])) / 4
    assert swapped.item() == pytest.approx(expected, rel=1e-6)


def test_nt_xent_gradients_reach_both_views():
    z1, z2 = _nt_xent_reference_inputs()
    z1.requires_grad_(True)
    z2.requires_grad_(True)
    nt_xent_loss(z1, z2, 0.5).backward()
    assert z1.grad is not None and z1.grad.abs().sum() > 0
    assert z2.grad is not None and z2.grad.abs().sum() > 0


# --------------------------------------------------------------------------- BYOL
def test_byol_loss_by_hand():
    prediction = _t([[1.0, 0.0], [0.0, 2.0]])  # second row unnormalised on purpose
    target = _t([[0.6, 0.8], [0.0, -1.0]])
    # cos = 0.6 -> 2 - 1.2 = 0.8 ; cos = -1 -> 2 + 2 = 4
    assert byol_loss(prediction, target).item() == pytest.approx((0.8 + 4.0) / 2, rel=1e-6)


def test_byol_loss_does_not_backprop_into_target():
    prediction = _t([[1.0, 0.0], [0.3, 0.7]]).requires_grad_(True)
    target = _t([[0.6, 0.8], [0.0, -1.0]]).requires_grad_(True)
    byol_loss(prediction, target).backward()
    assert prediction.grad is not None and prediction.grad.abs().sum() > 0
    assert target.grad is None


# --------------------------------------------------------------------------- global relation
def test_global_relation_loss_by_hand():
    tau_s, tau_t = 0.5, 0.25
    student = _t([[1.0, 0.0]])
    teacher = _t([[0.6, 0.8]])
    bank = _t([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    # teacher . bank = (.6, .8, -.6) / .25 -> (2.4, 3.2, -2.4)
    p_t = _softmax([2.4, 3.2, -2.4])
    # student . bank = (1, 0, -1) / .5 -> (2, 0, -2)
    s_logits = [2.0, 0.0, -2.0]
    log_z = math.log(sum(math.exp(x) for x in s_logits))
    expected = -sum(p * (s - log_z) for p, s in zip(p_t, s_logits))
    loss = global_relation_loss(student, teacher, bank, tau_student=tau_s, tau_teacher=tau_t)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_global_relation_loss_mean_over_batch_by_hand():
    tau_s, tau_t = 0.5, 0.25
    student = _t([[1.0, 0.0], [0.0, 1.0]])
    teacher = _t([[0.6, 0.8], [1.0, 0.0]])
    bank = _t([[1.0, 0.0], [0.0, 1.0]])
    row0 = -sum(p * math.log(q) for p, q in zip(_softmax([2.4, 3.2]), _softmax([2.0, 0.0])))
    row1 = -sum(p * math.log(q) for p, q in zip(_softmax([4.0, 0.0]), _softmax([0.0, 2.0])))
    loss = global_relation_loss(student, teacher, bank, tau_student=tau_s, tau_teacher=tau_t)
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_global_relation_loss_defaults_are_reco_temperatures():
    student = _t([[1.0, 0.0]])
    teacher = _t([[0.6, 0.8]])
    bank = _t([[1.0, 0.0], [0.0, 1.0]])
    p_t = _softmax([0.6 / 0.04, 0.8 / 0.04])
    p_s = _softmax([1.0 / 0.1, 0.0])
    expected = -sum(p * math.log(q) for p, q in zip(p_t, p_s))
    assert global_relation_loss(student, teacher, bank).item() == pytest.approx(expected, rel=1e-5)


def test_global_relation_loss_gradient_only_into_student():
    student = _t([[1.0, 0.0], [0.3, 0.9]]).requires_grad_(True)
    teacher = _t([[0.6, 0.8], [0.8, -0.6]]).requires_grad_(True)
    bank = _t([[1.0, 0.0], [0.0, 1.0], [-0.6, 0.8]]).requires_grad_(True)
    global_relation_loss(student, teacher, bank, 0.1, 0.04).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None
    assert bank.grad is None


def test_global_relation_loss_minimum_is_teacher_entropy():
    torch.manual_seed(0)
    bank = F.normalize(torch.randn(5, 3), dim=1)
    teacher = F.normalize(torch.randn(2, 3), dim=1)
    tau = 0.2
    p_t = [_softmax([float(v) / tau for v in row]) for row in (teacher @ bank.T)]
    entropy = sum(-sum(p * math.log(p) for p in row) for row in p_t) / 2

    student = teacher.clone().requires_grad_(True)
    loss = global_relation_loss(student, teacher, bank, tau_student=tau, tau_teacher=tau)
    assert loss.item() == pytest.approx(entropy, rel=1e-5)
    loss.backward()
    # p_s == p_t is the minimum of the cross-entropy: the gradient vanishes there
    assert student.grad.abs().max().item() < 1e-5

    for _ in range(20):
        other = F.normalize(torch.randn(2, 3), dim=1)
        assert global_relation_loss(other, teacher, bank, tau, tau).item() >= entropy - 1e-5


# --------------------------------------------------------------------------- local interpolation
def test_interpolation_target_by_hand():
    q1 = _t([[1.0, 0.0], [0.0, 1.0]]).requires_grad_(True)
    k2_permuted = _t([[0.0, 1.0], [0.6, 0.8]])
    lam = 0.25
    target = interpolation_target(q1, k2_permuted, lam)
    # row 0: .25 (1, 0) + .75 (0, 1) = (.25, .75); row 1: .25 (0, 1) + .75 (.6, .8) = (.45, .85)
    n0 = math.sqrt(0.25**2 + 0.75**2)
    n1 = math.sqrt(0.45**2 + 0.85**2)
    expected = [[0.25 / n0, 0.75 / n0], [0.45 / n1, 0.85 / n1]]
    assert torch.allclose(target, _t(expected), atol=1e-6)
    assert torch.allclose(target.norm(dim=1), torch.ones(2), atol=1e-6)
    assert not target.requires_grad


def test_interpolation_target_lam_endpoints():
    q1 = _t([[3.0, 4.0]])
    k2 = _t([[0.0, 1.0]])
    assert torch.allclose(interpolation_target(q1, k2, 1.0), _t([[0.6, 0.8]]), atol=1e-6)
    assert torch.allclose(interpolation_target(q1, k2, 0.0), _t([[0.0, 1.0]]), atol=1e-6)


def test_local_interpolation_loss_by_hand():
    temperature = 0.2
    mixed = _t([[0.6, 0.8]])
    target = _t([[1.0, 0.0]])
    negatives = _t([[0.0, 1.0], [-0.6, 0.8]])
    # z.t = .6, z.n1 = .8, z.n2 = -.36 + .64 = .28 -> / .2: 3, 4, 1.4
    expected = _ce(3.0, [4.0, 1.4])
    loss = local_interpolation_loss(mixed, target, negatives, temperature)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_local_interpolation_loss_gradient_only_into_mixed():
    mixed = _t([[0.6, 0.8], [1.0, 0.0]]).requires_grad_(True)
    target = _t([[1.0, 0.0], [0.0, 1.0]]).requires_grad_(True)
    negatives = _t([[0.0, 1.0], [-0.6, 0.8]]).requires_grad_(True)
    local_interpolation_loss(mixed, target, negatives, 0.2).backward()
    assert mixed.grad is not None and mixed.grad.abs().sum() > 0
    assert target.grad is None
    assert negatives.grad is None


# --------------------------------------------------------------------------- reduced precision
def _random_unit(*shape, seed):
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=generator), dim=-1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_losses_computed_in_float32_for_low_precision_inputs(dtype):
    """Low-precision inputs give exactly the float32 loss of the rounded inputs, finite."""
    q = _random_unit(8, 16, seed=1)
    k = _random_unit(8, 16, seed=2)
    w = _random_unit(8, 16, seed=3)
    bank = _random_unit(64, 16, seed=4)
    cases = {
        "info_nce": lambda a, b, c, n: info_nce_loss(a, b, n, 0.2),
        "nt_xent": lambda a, b, c, n: nt_xent_loss(a, b, 0.1),
        "byol": lambda a, b, c, n: byol_loss(a, b),
        "global": lambda a, b, c, n: global_relation_loss(a, c, n, 0.1, 0.04),
        "local": lambda a, b, c, n: local_interpolation_loss(
            a, interpolation_target(a, b, 0.3), n, 0.2
        ),
    }
    for name, fn in cases.items():
        low = fn(q.to(dtype), k.to(dtype), w.to(dtype), bank.to(dtype))
        rounded = fn(*(x.to(dtype).float() for x in (q, k, w, bank)))
        full = fn(q, k, w, bank)
        assert low.dtype == torch.float32, name
        assert torch.isfinite(low), name
        assert low.item() == pytest.approx(rounded.item(), rel=1e-5, abs=1e-6), name
        assert low.item() == pytest.approx(full.item(), rel=5e-2, abs=5e-2), name


# --------------------------------------------------------------------------- weighted kNN
def _unit(degrees: float) -> list[float]:
    radians = math.radians(degrees)
    return [math.cos(radians), math.sin(radians)]


def _knn_case():
    # query at 0 deg; one class-0 neighbour at 8 deg (cos .990), two class-1 neighbours at
    # +-60 deg (cos .5), and three class-0 points on the far side (cos ~ -1)
    train = _t([_unit(8), _unit(60), _unit(-60), _unit(170), _unit(180), _unit(-170)])
    labels = torch.tensor([0, 1, 1, 0, 0, 0])
    query = _t([_unit(0)])
    return train, labels, query


def test_weighted_knn_weighting_beats_majority_vote():
    train, labels, query = _knn_case()
    # k=3 picks {8, 60, -60}. Weights at T=0.1: class 0 exp(9.90) ~ 2e4 against class 1
    # 2 * exp(5) ~ 297, so the single close neighbour wins.
    weighted = weighted_knn_predict(train, labels, query, num_classes=2, k=3, temperature=0.1)
    assert weighted.tolist() == [0]
    # At T=100 the weights are all ~1: a plain majority vote, and class 1 has two of three.
    majority = weighted_knn_predict(train, labels, query, num_classes=2, k=3, temperature=100.0)
    assert majority.tolist() == [1]


def test_weighted_knn_uses_only_k_neighbours():
    train, labels, query = _knn_case()
    # k=6 at T=100 counts the three far class-0 points too: 4 votes against 2
    assert weighted_knn_predict(train, labels, query, 2, k=6, temperature=100.0).tolist() == [0]
    # k larger than the bank is clipped to the bank
    assert weighted_knn_predict(train, labels, query, 2, k=50, temperature=100.0).tolist() == [0]


def test_weighted_knn_normalises_features_and_chunks():
    train, labels, query = _knn_case()
    scale = torch.tensor([[5.0], [0.1], [0.1], [1.0], [3.0], [1.0]])
    queries = torch.cat([query, _t([_unit(60)]), _t([_unit(175)])])
    expected = [0, 1, 0]
    out = weighted_knn_predict(
        train * scale, labels, queries * 7, 2, k=3, temperature=0.1, chunk_size=1
    )
    assert out.tolist() == expected
    accuracy = knn_accuracy(
        train, labels, queries, torch.tensor([0, 1, 1]), 2, k=3, temperature=0.1
    )
    assert accuracy == pytest.approx(2 / 3)


def test_knn_monitor_matches_knn_accuracy_over_batches_and_resets():
    """The Metric collects bank and query batches and gives the same accuracy as the
    function on all of them at once; reset empties it for the next epoch."""
    from reco_lightning.metrics import KNNMonitor, knn_accuracy

    generator = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(40, 8, generator=generator), torch.randn(12, 8, generator=generator)
    bank_labels, query_labels = torch.arange(40) % 4, torch.arange(12) % 4
    monitor = KNNMonitor(num_classes=4, k=5, temperature=0.07)
    assert not monitor.has_data()
    for rows in (slice(0, 25), slice(25, 40)):
        monitor.update(bank[rows], bank_labels[rows], bank=True)
    monitor.update(queries[:7], query_labels[:7], bank=False)
    monitor.update(queries[7:], query_labels[7:], bank=False)
    result = monitor.compute()
    expected = knn_accuracy(bank, bank_labels, queries, query_labels, 4, 5, 0.07)
    assert result.accuracy.item() == pytest.approx(expected)
    assert torch.equal(result.query_features, queries) and torch.equal(
        result.query_labels, query_labels
    )
    monitor.reset()
    assert not monitor.has_data()
    assert "bank_features" not in monitor.state_dict()  # not saved in checkpoints
