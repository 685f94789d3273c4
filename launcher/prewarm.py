"""Pre-warmed training processes: pay for interpreter start and ``import torch`` ahead of time.

A restart (crash, lost peer, new peer) needs new training processes; starting Python and
importing torch takes seconds, longer than the rest of a re-formation. ``WarmPool`` keeps
``size`` processes of ``launcher.worker_boot`` that have already imported torch and wait on
stdin; ``take()`` hands one out, ``launch()`` gives it its environment and entrypoint. The pool
refills at a ``maintain()`` at least ``refill_delay`` seconds later, and the agent calls that
only once the new processes committed a step (``launcher.agent``), so the refill's imports do not
compete for CPU with the round that is just forming.

Guarantees: a taken process is alive and never used twice; a warm process that died is
discarded (the caller falls back to a cold start); every pooled process dies with the agent
(parent-death signal) and on ``close()``. Only for Python entrypoints (not ``--no-python``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

from launcher.parent_death import die_with_parent

log = logging.getLogger(__name__)

# The pipe a pooled process writes one byte to once its imports are done (see wait_ready).
BOOT_READY_FD = "ELASTIC_BOOT_READY_FD"


class WarmPool:
    """See the module docstring."""

    def __init__(self, size: int, env: Mapping[str, str], refill_delay: float = 2.0) -> None:
        self.size = size
        self.env = dict(env)
        self.refill_delay = refill_delay
        self._ready: list[subprocess.Popen[bytes]] = []
        self._signals: dict[int, int] = {}  # pid -> read end of its "imported" pipe
        self._refill_at: float | None = time.monotonic()

    def maintain(self) -> None:
        """Start missing processes once the refill delay has passed (cheap to call often)."""
        if self._refill_at is None or time.monotonic() < self._refill_at:
            return
        for proc in self._ready:
            if proc.poll() is not None:
                self._close_signal(proc)
        self._ready = [p for p in self._ready if p.poll() is None]
        while len(self._ready) < self.size:
            read, write = os.pipe()
            try:
                proc = subprocess.Popen(
                    die_with_parent([sys.executable, "-u", "-m", "launcher.worker_boot"]),
                    env={**self.env, BOOT_READY_FD: str(write)}, pass_fds=(write,),
                    stdin=subprocess.PIPE, start_new_session=True,
                )
            except BaseException:
                os.close(read)
                raise
            finally:
                os.close(write)
            self._ready.append(proc)
            self._signals[proc.pid] = read
        self._refill_at = None

    def wait_ready(self, timeout: float) -> bool:
        """Block until every pooled process has imported torch (or died), at most ``timeout``
        seconds; True when all did. The agent waits for this before it first registers in
        the rendezvous: a node is of use to a round only once its processes can start at once,
        and its import then counts as the pod's own start-up, not as the round's time."""
        deadline = time.monotonic() + timeout
        pending = [fd for fd in (self._signals.get(p.pid) for p in self._ready) if fd is not None]
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            readable, _, _ = select.select(pending, [], [], left)
            for fd in readable:
                os.read(fd, 1)  # b"1" once imported; b"" (EOF) if it died
                pending.remove(fd)
        return True

    def take(self) -> subprocess.Popen[bytes] | None:
        """A warm process, or None when none is ready; schedules a refill."""
        self._refill_at = time.monotonic() + self.refill_delay
        while self._ready:
            proc = self._ready.pop(0)
            self._close_signal(proc)
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

    def _close_signal(self, proc: subprocess.Popen[bytes]) -> None:
        fd = self._signals.pop(proc.pid, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        for proc in self._ready:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            self._close_signal(proc)
        self._ready = []
        self._refill_at = None
