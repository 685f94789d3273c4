"""Children that die with the agent: a SIGKILLed agent must leave no orphan holding a GPU or a
port. Its own module because both the worker group (:mod:`launcher.monitor`) and the warm pool
(:mod:`launcher.prewarm`) start such children, and the warm pool is one of the worker group's
parts, so it cannot import the worker group. (The emulator's pod runtime has a wrapper of its
own, ``kube_emulator.node.runtime``: the emulator imports nothing of the product.)

A wrapper rather than ``preexec_fn``: with a ``preexec_fn`` Python has to ``fork()``, and a
``fork()`` in the agent, which runs grpc threads (etcd3), runs grpc's atfork handlers, which stop
and restart grpc's threads and are known to hang the forking thread (grpc/grpc#17986, #22624);
that thread is the agent's main loop. CPython's documentation also warns that Python code run
between ``fork`` and ``exec`` in a process with threads can deadlock. Without a ``preexec_fn``
Python spawns without ``fork()`` (vfork), and the wrapper runs as the new process itself, after
the exec, where no other thread exists. (One CI run had two agents of a launcher test never
train together; the logs of that run were lost, and this hang is the likeliest cause found.)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

# Runs as the new process before the real program: asks Linux to SIGKILL it when the parent
# dies, gives up if that already happened (the parent died before the prctl), then execs the
# program in place, so its pid is the one the parent's Popen has.
PROGRAM = """\
import os, signal, sys
try:
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass  # not Linux: no parent-death signal
if os.getppid() != int(sys.argv[1]):
    sys.exit(137)
try:
    os.execvp(sys.argv[2], sys.argv[2:])
except OSError as exc:
    print(f"exec {sys.argv[2]!r}: {exc.strerror}", file=sys.stderr)
    sys.exit(127)
"""


def die_with_parent(argv: Sequence[str]) -> list[str]:
    """``argv`` wrapped so that the process is SIGKILLed when this process (more exactly, the
    thread that starts it) dies; the wrapper costs one ``python -I -S`` start, about 20 ms."""
    return [sys.executable, "-I", "-S", "-c", PROGRAM, str(os.getpid()), *argv]
