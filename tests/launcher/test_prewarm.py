"""The pre-warmed process pool: ready signalling, hand-out, and clean-up."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from launcher.prewarm import WarmPool
from tests.launcher.conftest import REPO


def test_a_pooled_process_says_when_its_imports_are_done_and_then_runs_the_script(
        tmp_path: Path) -> None:
    pool = WarmPool(1, dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        pool.maintain()
        assert not pool.wait_ready(0.01)  # importing torch takes far longer than 10 ms
        assert pool.wait_ready(120)
        assert pool.wait_ready(0.01)  # already signalled: no second wait
        proc = pool.take()
        assert proc is not None
        out = tmp_path / "out"
        script = tmp_path / "script.py"
        script.write_text("import os, sys, torch\n"
                          f"open({str(out)!r}, 'w').write(repr((sys.argv[1:], "
                          "'ELASTIC_BOOT_READY_FD' in os.environ, 'torch' in sys.modules)))\n")
        assert WarmPool.launch(proc, dict(os.environ), [sys.executable, "-u", str(script), "x"])
        assert proc.wait(60) == 0
        assert out.read_text() == "(['x'], False, True)"
        assert pool._signals == {}  # the hand-out closed its pipe
    finally:
        pool.close()


def test_a_pooled_process_that_dies_does_not_hold_the_wait() -> None:
    pool = WarmPool(1, dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        pool.maintain()
        pool._ready[0].kill()  # dies before its imports are done
        started = time.monotonic()
        assert pool.wait_ready(60)  # EOF on its pipe: not waited for any longer
        assert time.monotonic() - started < 30
        assert pool.take() is None
    finally:
        pool.close()
