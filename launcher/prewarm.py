"""Pre-warmed training processes: pay for interpreter start and ``import torch`` ahead of time.

A restart (crash, lost peer, new peer) needs new training processes; starting Python and
importing torch takes seconds, longer than the rest of a re-formation. ``WarmPool`` keeps
``size`` processes of ``launcher.worker_boot`` that have already imported torch and wait on
stdin; ``take()`` hands one out, ``launch()`` gives it its environment and entrypoint. The pool
refills after ``refill_delay`` seconds (not at once, so the refill's imports do not compete for
CPU with the round that is just starting).

Guarantees: a taken process is alive and never used twice; a warm process that died is
discarded (the caller falls back to a cold start); every pooled process dies with the agent
(parent-death signal) and on ``close()``. Only for Python entrypoints (not ``--no-python``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

from launcher.parent_death import die_with_parent

log = logging.getLogger(__name__)


class WarmPool:
    """See the module docstring."""

    def __init__(self, size: int, env: Mapping[str, str], refill_delay: float = 2.0) -> None:
        self.size = size
        self.env = dict(env)
        self.refill_delay = refill_delay
        self._ready: list[subprocess.Popen[bytes]] = []
        self._refill_at: float | None = time.monotonic()

    def maintain(self) -> None:
        """Start missing processes once the refill delay has passed (cheap to call often)."""
        if self._refill_at is None or time.monotonic() < self._refill_at:
            return
        self._ready = [p for p in self._ready if p.poll() is None]
        while len(self._ready) < self.size:
            self._ready.append(subprocess.Popen(
                [sys.executable, "-u", "-m", "launcher.worker_boot"], env=self.env,
                stdin=subprocess.PIPE, start_new_session=True, preexec_fn=die_with_parent,
            ))
        self._refill_at = None

    def take(self) -> subprocess.Popen[bytes] | None:
        """A warm process, or None when none is ready; schedules a refill."""
        self._refill_at = time.monotonic() + self.refill_delay
        while self._ready:
            proc = self._ready.pop(0)
            if proc.poll() is None:
                return proc
        return None

    @staticmethod
    def launch(proc: subprocess.Popen[bytes], env: Mapping[str, str], cmd: Sequence[str]) -> bool:
        """Start ``cmd`` with ``env`` in a taken process; False if it died meanwhile."""
        assert proc.stdin is not None
        try:
            proc.stdin.write(json.dumps({"env": dict(env), "cmd": list(cmd)}).encode() + b"\n")
            proc.stdin.close()
            return True
        except (BrokenPipeError, OSError):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
            return False

    def close(self) -> None:
        for proc in self._ready:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self._ready = []
        self._refill_at = None
