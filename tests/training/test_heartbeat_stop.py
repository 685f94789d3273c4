"""Heartbeat writes and SIGTERM handling."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from launcher.training import Heartbeat, StopRequest


def test_heartbeat_writes_step_and_touches_mtime(tmp_path: Path) -> None:
    path = tmp_path / "hb"
    beat = Heartbeat(str(path))
    assert path.read_text() == ""  # constructing does not arm the agent's hang detection
    os.utime(path, (1_000_000, 1_000_000))
    beat.beat(12345)
    assert int(path.read_text()) == 12345 and path.stat().st_mtime > 1_000_000
    beat.beat(7)
    assert int(path.read_text()) == 7
    beat.close()
    beat.beat(8)  # no-op after close
    Heartbeat(None).beat(1)


def test_sigterm_sets_flag_and_uninstall_restores_handler() -> None:
    before = signal.getsignal(signal.SIGTERM)
    stop = StopRequest()
    try:
        assert not stop.requested and not stop.agreed()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.agreed()
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGTERM) is before
