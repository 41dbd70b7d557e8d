"""Relation diagnostics: how a feature space arranges a labelled set.

ReCo's claim is about structure: plain instance discrimination pushes *every* other image
away, same-class ones included, while the relation terms keep graded similarity. These
measures (on L2-normalised features, in chunks so that no n x n matrix exists at once) make
that visible: neighbour purity, same- and different-class cosines (instance discrimination
drives both towards 0; a larger gap means classes stay together), and Wang and Isola's
(2020) alignment and uniformity.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def neighbour_purity(features: Tensor, labels: Tensor, k: int, chunk_size: int = 1024) -> float:
    """Mean share of each sample's ``k`` nearest neighbours (cosine, itself excluded) with its
    label: 1 = classes form clean neighbourhoods."""
    features = F.normalize(features.float(), dim=1)
    n = features.shape[0]
    k = min(k, n - 1)
    if k <= 0:
        raise ValueError("neighbour purity needs at least two samples")
    total = 0.0
    for start in range(0, n, chunk_size):
        similarity = features[start : start + chunk_size] @ features.T
        rows = torch.arange(similarity.shape[0], device=features.device)
        similarity[rows, rows + start] = float("-inf")  # not one's own neighbour
        neighbours = similarity.topk(k, dim=1).indices
        total += (
            (labels[neighbours] == labels[start : start + chunk_size, None]).float().sum().item()
        )
    return total / (n * k)


@torch.no_grad()
def class_cosines(features: Tensor, labels: Tensor, chunk_size: int = 1024) -> tuple[float, float]:
    """Mean cosine of same-class pairs and of different-class pairs (distinct samples)."""
    features = F.normalize(features.float(), dim=1)
    n = features.shape[0]
    same_sum = diff_sum = 0.0
    same_count = diff_count = 0
    for start in range(0, n, chunk_size):
        similarity = features[start : start + chunk_size] @ features.T
        same = labels[start : start + chunk_size, None] == labels[None, :]
        diff = ~same
        rows = torch.arange(similarity.shape[0], device=features.device)
        same[rows, rows + start] = diff[rows, rows + start] = False  # pairs of distinct samples
        same_sum += similarity[same].sum().item()
        diff_sum += similarity[diff].sum().item()
        same_count += int(same.sum())
        diff_count += int(diff.sum())
    same_mean = same_sum / same_count if same_count else float("nan")
    diff_mean = diff_sum / diff_count if diff_count else float("nan")
    return same_mean, diff_mean


@torch.no_grad()
def alignment(view1: Tensor, view2: Tensor, alpha: float = 2.0) -> float:
    """``E |f(x1) - f(x2)|^alpha`` over positive pairs (rows of ``view1`` and ``view2``); lower
    = more invariant."""
    view1, view2 = F.normalize(view1.float(), dim=1), F.normalize(view2.float(), dim=1)
    return (view1 - view2).norm(dim=1).pow(alpha).mean().item()


@torch.no_grad()
def uniformity(features: Tensor, t: float = 2.0, chunk_size: int = 1024) -> float:
    """``log E exp(-t |x - y|^2)`` over pairs of distinct samples; lower = spread more evenly
    over the sphere (-4 is the floor for well-spread high-dimensional features)."""
    features = F.normalize(features.float(), dim=1)
    n = features.shape[0]
    if n < 2:
        raise ValueError("uniformity needs at least two samples")
    # |x - y|^2 = 2 - 2 cos for unit vectors; log-sum-exp keeps the mean stable
    log_terms = []
    for start in range(0, n, chunk_size):
        similarity = features[start : start + chunk_size] @ features.T
        exponent = -t * (2.0 - 2.0 * similarity)
        rows = torch.arange(similarity.shape[0], device=features.device)
        exponent[rows, rows + start] = float("-inf")
        log_terms.append(torch.logsumexp(exponent.flatten(), dim=0))
    return (torch.logsumexp(torch.stack(log_terms), dim=0) - math.log(n * (n - 1))).item()


@torch.no_grad()
def view_pair_features(
    network: Callable[[Tensor], Tensor], batches: Iterable[Any], device: torch.device
) -> tuple[Tensor, Tensor]:
    """``network``'s float features of the two strong views of each batch
    (``{"strong": [v1, v2]}``): the input of :func:`alignment`."""
    pairs = [[network(view.to(device)).float() for view in batch["strong"]] for batch in batches]
    return torch.cat([first for first, _ in pairs]), torch.cat([second for _, second in pairs])


def relation_diagnostics(
    features: Tensor, labels: Tensor, view1: Tensor | None = None, view2: Tensor | None = None
) -> dict[str, float]:
    """All diagnostics of one labelled set; alignment only when two views are given."""
    same, diff = class_cosines(features, labels)
    result = {f"purity@{k}": neighbour_purity(features, labels, k) for k in (10, 50)}
    result.update(cos_same_class=same, cos_diff_class=diff, cos_gap=same - diff)
    result["uniformity"] = uniformity(features)
    if view1 is not None and view2 is not None:
        result["alignment"] = alignment(view1, view2)
    return result


def term_gradient_norms(
    terms: dict[str, Tensor | None], parameters: Iterable[Tensor]
) -> dict[str, Tensor]:
    """The norm of the gradient each loss term alone puts on ``parameters`` (one backward
    pass per term, graphs kept, nothing accumulated into ``.grad``); 0 for a term that is
    ``None`` or carries no gradient (weight 0, a bank still filling). Whatever a term's
    value, this says how much of the update it drives.

    >>> w = torch.ones(2, requires_grad=True)
    >>> norms = term_gradient_norms({"a": (3 * w).sum(), "b": None}, [w])
    >>> round(float(norms["a"]), 3), float(norms["b"]), w.grad is None
    (4.243, 0.0, True)
    """
    parameters = [p for p in parameters if p.requires_grad]
    device = parameters[0].device if parameters else None
    norms: dict[str, Tensor] = {}
    for name, term in terms.items():
        norms[name] = torch.zeros((), device=device)
        if term is not None and term.requires_grad:
            grads = torch.autograd.grad(term, parameters, retain_graph=True, allow_unused=True)
            squares = [g.float().pow(2).sum() for g in grads if g is not None]
            if squares:
                norms[name] = torch.stack(squares).sum().sqrt()
    return norms


def term_gradient_shares(
    terms: dict[str, Tensor | None], parameters: Iterable[Tensor]
) -> dict[str, Tensor]:
    """``grad_norm_<term>`` (:func:`term_gradient_norms`) and ``grad_share_<term>``, its
    share of their sum, for every term.

    >>> w = torch.ones(2, requires_grad=True)
    >>> shares = term_gradient_shares({"a": w.sum(), "b": (3 * w).sum()}, [w])
    >>> float(shares["grad_share_a"]), float(shares["grad_share_b"])
    (0.25, 0.75)
    """
    norms = term_gradient_norms(terms, parameters)
    total = sum(norms.values()).clamp_min(1e-12)
    shares = {f"grad_norm_{name}": norm for name, norm in norms.items()}
    return shares | {f"grad_share_{name}": norm / total for name, norm in norms.items()}


def spread_step_due(batch_idx: int, num_batches: float, steps: int) -> bool:
    """Whether ``batch_idx`` is one of ``steps`` batches spread evenly over an epoch of
    ``num_batches`` (infinite: the first ``steps``).

    >>> [b for b in range(10) if spread_step_due(b, 10, 2)]
    [0, 5]
    """
    if steps <= 0:
        return False
    interval = max(int(num_batches) // steps, 1) if math.isfinite(num_batches) else 1
    return batch_idx % interval == 0 and batch_idx // interval < steps


__all__ = [
    "alignment",
    "class_cosines",
    "neighbour_purity",
    "relation_diagnostics",
    "spread_step_due",
    "term_gradient_shares",
    "term_gradient_norms",
    "uniformity",
]
