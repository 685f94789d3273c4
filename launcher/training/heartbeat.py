"""Progress heartbeat for the agent's hang detection."""

from __future__ import annotations

import os


class Heartbeat:
    """Writes the current step into the agent's heartbeat file, once per step.

    The agent only looks at the file's mtime; the first write arms its hang detection, so nothing
    is written at construction. A beat is one ``pwrite`` of a fixed-width line on a descriptor
    kept open (no open/close, no fsync), a few microseconds. With ``path=None`` (no agent) every
    call is a no-op.
    """

    _WIDTH = 20

    def __init__(self, path: str | None) -> None:
        self._fd: int | None = None
        if path is not None:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)

    def beat(self, step: int) -> None:
        """Record that ``step`` completed (updates the file's mtime)."""
        if self._fd is not None:
            os.pwrite(self._fd, f"{step:>{self._WIDTH}}\n".encode(), 0)

    def close(self) -> None:
        """Release the descriptor; later beats are no-ops."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
