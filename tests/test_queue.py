"""FeatureQueue: FIFO order, wrap-around, pointer bookkeeping, errors and checkpointing."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from reco_lightning.errors import ConfigError
from reco_lightning.models.queue import FeatureQueue


def _keys(start: int, n: int, dim: int = 3) -> torch.Tensor:
    """``n`` keys whose every entry is their running number ``start, start + 1, ...``."""
    return torch.arange(start, start + n, dtype=torch.float32).unsqueeze(1).repeat(1, dim)


def _ids(queue: FeatureQueue) -> list[float]:
    return queue.features[:, 0].tolist()


def test_starts_with_unit_vectors_and_zero_pointer():
    torch.manual_seed(0)
    queue = FeatureQueue(10, 4)
    assert queue.size == 10
    assert queue.features.shape == (10, 4)
    assert torch.allclose(queue.features.norm(dim=1), torch.ones(10), atol=1e-6)
    assert int(queue.pointer) == 0 and int(queue.num_enqueued) == 0


def test_fifo_order_without_wrap():
    torch.manual_seed(0)
    queue = FeatureQueue(8, 3)
    initial = queue.features.clone()
    queue.enqueue(_keys(0, 4))
    assert torch.equal(queue.features[:4], _keys(0, 4))
    assert torch.equal(queue.features[4:], initial[4:])  # not yet written
    assert int(queue.pointer) == 4 and int(queue.num_enqueued) == 4
    queue.enqueue(_keys(4, 4))
    assert _ids(queue) == [0, 1, 2, 3, 4, 5, 6, 7]
    assert int(queue.pointer) == 0 and int(queue.num_enqueued) == 8
    queue.enqueue(_keys(8, 4))  # overwrites the oldest four
    assert _ids(queue) == [8, 9, 10, 11, 4, 5, 6, 7]
    assert int(queue.pointer) == 4 and int(queue.num_enqueued) == 12


def test_wrap_around_with_batch_not_dividing_size():
    torch.manual_seed(0)
    queue = FeatureQueue(10, 3)
    queue.enqueue(_keys(0, 4))
    queue.enqueue(_keys(4, 4))
    assert _ids(queue)[:8] == [0, 1, 2, 3, 4, 5, 6, 7]
    assert int(queue.pointer) == 8
    queue.enqueue(_keys(8, 4))  # k8, k9 at the end, k10, k11 wrap to the front
    assert _ids(queue) == [10, 11, 2, 3, 4, 5, 6, 7, 8, 9]
    assert int(queue.pointer) == 2 and int(queue.num_enqueued) == 12
    queue.enqueue(_keys(12, 4))  # oldest are now k2..k5
    assert _ids(queue) == [10, 11, 12, 13, 14, 15, 6, 7, 8, 9]
    assert int(queue.pointer) == 6 and int(queue.num_enqueued) == 16
    assert torch.equal(queue.features, torch.stack([_keys(i, 1)[0] for i in _ids(queue)]))


def test_enqueue_exactly_size_keys_overwrites_all():
    queue = FeatureQueue(5, 3)
    queue.enqueue(_keys(0, 3))
    queue.enqueue(_keys(3, 5))  # starts at 3, wraps: rows 3, 4, 0, 1, 2
    assert _ids(queue) == [5, 6, 7, 3, 4]
    assert int(queue.pointer) == 3 and int(queue.num_enqueued) == 8


def test_enqueue_more_keys_than_size_raises_naming_setting():
    queue = FeatureQueue(4, 3, name="reco.bank_size")
    before = queue.features.clone()
    with pytest.raises(ConfigError, match=r"reco\.bank_size"):
        queue.enqueue(_keys(0, 5))
    assert torch.equal(queue.features, before)
    assert int(queue.pointer) == 0 and int(queue.num_enqueued) == 0


@pytest.mark.parametrize("size", [0, -3])
def test_non_positive_size_raises_naming_setting(size):
    with pytest.raises(ConfigError, match=r"method\.queue_size"):
        FeatureQueue(size, 3, name="method.queue_size")


def test_enqueue_stores_detached_copy_and_gather_is_identity_on_one_process():
    a, b = FeatureQueue(6, 3), FeatureQueue(6, 3)
    keys = _keys(0, 2).requires_grad_(True)
    a.enqueue(keys)
    b.enqueue(keys.detach(), gather=False)
    assert torch.equal(a.features[:2], b.features[:2])
    assert not a.features.requires_grad
    with torch.no_grad():
        keys.mul_(2)  # later changes to the caller's tensor do not leak into the queue
    assert _ids(a)[:2] == [0, 1]


def test_state_dict_round_trip():
    torch.manual_seed(0)
    queue = FeatureQueue(10, 3)
    queue.enqueue(_keys(0, 4))
    queue.enqueue(_keys(4, 4))
    queue.enqueue(_keys(8, 4))
    buffer = io.BytesIO()
    torch.save(queue.state_dict(), buffer)
    buffer.seek(0)

    torch.manual_seed(123)
    fresh = FeatureQueue(10, 3)
    assert not torch.equal(fresh.features, queue.features)
    fresh.load_state_dict(torch.load(buffer))
    assert torch.equal(fresh.features, queue.features)
    assert int(fresh.pointer) == 2 and int(fresh.num_enqueued) == 12
    # and it continues where the saved queue stopped
    fresh.enqueue(_keys(12, 1))
    assert _ids(fresh)[2] == 12 and int(fresh.pointer) == 3


def test_queue_is_buffer_of_parent_module():
    class Owner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.keys = FeatureQueue(6, 3)

    owner = Owner()
    state = owner.state_dict()
    assert {"keys.features", "keys.pointer", "keys.num_enqueued"} <= set(state)
    assert list(owner.parameters()) == []  # buffers, never trained
    assert "features" in dict(owner.keys.named_buffers())


def test_to_dtype_moves_features_but_not_pointer():
    queue = FeatureQueue(6, 3).to(torch.float64)
    assert queue.features.dtype == torch.float64
    assert queue.pointer.dtype == torch.long and queue.num_enqueued.dtype == torch.long
    queue.enqueue(_keys(0, 2))  # float32 keys into a float64 queue
    assert queue.features.dtype == torch.float64
    assert _ids(queue)[:2] == [0, 1]
    half = FeatureQueue(6, 3).to(torch.bfloat16)
    half.enqueue(_keys(0, 2))
    assert half.features.dtype == torch.bfloat16 and _ids(half)[:2] == [0, 1]
