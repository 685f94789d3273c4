"""SIGTERM handling: a flag set by the signal, and a stop decision all ranks agree on.

The agent sends SIGTERM to every training process of a world on a resize or a shutdown, but the
processes see it at different moments. Stopping where each one happens to notice would leave
ranks at different steps. Instead the handler only sets a flag, and at every step boundary all
ranks all-reduce (MAX) their flags: the result of the *same* collective call is identical on all
ranks, so they all stop after the same step, where their replicated state (model, optimizer,
scheduler, sampler progress) is identical and one rank can save it. A signal that arrives after
a boundary's all-reduce is picked up at the next boundary.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

import torch
import torch.distributed as dist

_Handler = signal.Handlers | int | None


class StopRequest:
    """Catches ``signals`` (default SIGTERM) for the lifetime of the object."""

    def __init__(self, signals: tuple[signal.Signals, ...] = (signal.SIGTERM,)) -> None:
        self._event = threading.Event()
        self._previous: dict[signal.Signals, _Handler | object] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in signals:
                self._previous[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._event.set()

    @property
    def requested(self) -> bool:
        """True once this process received a stop signal."""
        return self._event.is_set()

    def request(self) -> None:
        """Ask for a stop as if a signal had arrived (e.g. from the training script itself)."""
        self._event.set()

    def agreed(self) -> bool:
        """Whether *any* rank asked to stop; a collective: every rank must call it once per step."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.requested
        flag = torch.tensor([1 if self.requested else 0], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def uninstall(self) -> None:
        """Put the previous signal handlers back."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)  # type: ignore[arg-type]
        self._previous.clear()
