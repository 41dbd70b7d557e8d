"""Capture and restore every random number generator a training step draws from.

Saved in checkpoints so that a run resumed mid-epoch draws the same ReCo mixing ratios and
permutations as an uninterrupted one (augmentations are seeded per image anyway).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def rng_states() -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's CPU (and CUDA, where present) RNGs."""
    states: dict[str, Any] = {
        "python": random.getstate(),
        # as plain values and tensors, so the checkpoint loads with torch.load(weights_only=True)
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def _numpy_state() -> tuple:
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return (
        str(kind),
        torch.from_numpy(keys.astype(np.int64)),
        int(position),
        int(has_gauss),
        float(cached),
    )


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` captured (the CUDA state of the current device)."""
    random.setstate(states["python"])
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"].cpu())
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"].cpu())
