"""Capture and restore the random number generators a training step may use."""

from __future__ import annotations

import random
from typing import Any

import torch


def capture() -> dict[str, Any]:
    """This process's RNG states (torch CPU, CUDA if initialised, Python, NumPy if installed).

    Only plain containers and tensors, so the state loads with ``torch.load(weights_only=True)``.
    """
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np
    except ImportError:
        return state
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state["numpy"] = (kind, torch.from_numpy(keys.copy()), pos, has_gauss, gauss)
    return state


def restore(state: dict[str, Any]) -> None:
    """Restore states from ``capture`` (parts this process cannot use are ignored)."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        try:
            import numpy as np
        except ImportError:
            return
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy(), pos, has_gauss, gauss))


def reseed(seed: int, *parts: int) -> None:
    """Seed all generators from ``seed`` and ``parts`` (e.g. step and rank), deterministically."""
    mixed = seed
    for part in parts:
        mixed = (mixed * 1_000_003 + part) & 0x7FFF_FFFF_FFFF_FFFF
    torch.manual_seed(mixed)
    random.seed(mixed)
    try:
        import numpy as np
    except ImportError:
        return
    np.random.seed(mixed & 0xFFFF_FFFF)
