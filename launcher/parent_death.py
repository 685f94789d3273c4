"""Children that die with the agent: a SIGKILLed agent must leave no orphan holding a GPU or a
port. Its own module because both the worker group (:mod:`launcher.monitor`) and the warm pool
(:mod:`launcher.prewarm`) start such children, and the warm pool is one of the worker group's
parts, so it cannot import the worker group.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn: ask Linux to SIGKILL this child when the agent dies (no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
