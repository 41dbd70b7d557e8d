"""ReCo's two relation terms as pure functions (Zhang et al., arXiv 2211.01796; the README's
opening section says what each computes)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def global_relation_loss(
    student: Tensor,
    teacher: Tensor,
    bank: Tensor,
    tau_student: float = 0.1,
    tau_teacher: float = 0.04,
) -> Tensor:
    """Cross-entropy from the teacher's to the student's similarity distribution over a bank.

    ``p_t = softmax(teacher @ bank.T / tau_teacher)`` (no gradient) is the sharper
    distribution of the weak view; ``p_s = softmax(student @ bank.T / tau_student)`` that of
    the strong view. Returns ``mean_i(-sum_j p_t[i, j] log p_s[i, j])``. Computed in
    float32: with ``tau_teacher = 0.04`` the logits reach 25, too close to fp16's range.

    Args:
        student: ``(B, D)`` online embeddings of strong views ``q1``, with gradient.
        teacher: ``(B, D)`` target embeddings of the weak views of the same images.
        bank: ``(K, D)`` relation bank of earlier weak-view target embeddings.
    """
    bank = bank.detach().float()
    with torch.no_grad():
        teacher_probs = F.softmax(teacher.detach().float() @ bank.T / tau_teacher, dim=1)
    student_log_probs = F.log_softmax(student.float() @ bank.T / tau_student, dim=1)
    return -(teacher_probs * student_log_probs).sum(dim=1).mean()


def interpolation_target(q1: Tensor, k2_permuted: Tensor, lam: float) -> Tensor:
    """Where a pixel mix of images ``i`` and ``pi(i)`` should embed, detached (a target, not a
    path for gradients): ``normalize(lam * q1 + (1 - lam) * k2[pi])``."""
    mixed = lam * q1.detach().float() + (1.0 - lam) * k2_permuted.detach().float()
    return F.normalize(mixed, dim=1)


def local_interpolation_loss(
    mixed: Tensor,
    target: Tensor,
    negatives: Tensor,
    temperature: float,
    exclude: Tensor | None = None,
) -> Tensor:
    """InfoNCE of the mixed image's embedding against its interpolation target and negatives.

    ``cross_entropy([z . t, z . N^T] / tau, 0)`` in float32; the target and the negatives
    are detached, so only ``mixed`` gets gradient.

    Args:
        mixed: ``(B, D)`` online embeddings of the mixed images.
        target: ``(B, D)`` their interpolation targets.
        negatives: ``(K, D)`` negatives shared by all rows (a queue, or this batch's keys).
        temperature: softmax temperature, > 0.
        exclude: optional ``(B, K)`` mask, ``True`` where a negative does not count for a
            row (with batch negatives: the row's own key and its mixing partner's, which
            make up its target).

    >>> z = torch.tensor([[1.0, 0.0]]); t = torch.tensor([[1.0, 0.0]])
    >>> n = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    >>> mask = torch.tensor([[False, True]])
    >>> round(local_interpolation_loss(z, t, n, 1.0, exclude=mask).item(), 4)
    0.3133
    """
    mixed = mixed.float()
    positive_logit = (mixed * target.detach().float()).sum(dim=1, keepdim=True)
    negative_logits = mixed @ negatives.detach().float().T
    if exclude is not None:
        negative_logits = negative_logits.masked_fill(exclude, float("-inf"))
    logits = torch.cat([positive_logit, negative_logits], dim=1) / temperature
    labels = torch.zeros(mixed.shape[0], dtype=torch.long, device=mixed.device)
    return F.cross_entropy(logits, labels)
