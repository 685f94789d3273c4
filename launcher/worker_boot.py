"""Child side of a pre-warmed worker: import torch now, run the training entrypoint later.

Started by ``launcher.prewarm.WarmPool`` as ``python -u -m launcher.worker_boot`` while the agent
is still waiting for a round, so the seconds ``import torch`` takes are spent before a restart,
not during it. It reads exactly one JSON line from stdin: ``{"env": {...}, "cmd": [...]}``
(``cmd`` as the agent would have exec'd it: ``[python, -u, script, args...]`` or
``[python, -u, -m, module, args...]``), replaces its environment with ``env``, points stdin at
/dev/null and runs the entrypoint as ``__main__``, with ``sys.argv`` and ``sys.path[0]`` as
Python would have set them. An exception or ``sys.exit`` ends the process exactly as it would
end a script started directly. EOF on stdin (the agent is gone or did not need it) exits 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import runpy
import sys

from launcher.prewarm import BOOT_READY_FD


def _preimport() -> None:
    # What nearly every training script imports first; failures surface later in the script.
    # torch._dynamo: building any torch.optim optimizer imports it, 1.3 s on a quiet 2-core
    # machine, which a joiner would otherwise pay after the survivors asked for it.
    try:
        import torch
        import torch._dynamo
        import torch.distributed
        import torch.optim
        import torch.utils.data  # noqa: F401
    except ImportError:
        pass


def main() -> None:
    _preimport()
    ready = os.environ.pop(BOOT_READY_FD, "")
    if ready:  # tell the pool the imports are done (WarmPool.wait_ready)
        with contextlib.suppress(OSError):
            os.write(int(ready), b"1")
            os.close(int(ready))
    line = sys.stdin.readline()
    if not line:
        sys.exit(0)
    payload = json.loads(line)
    env: dict[str, str] = payload["env"]
    cmd: list[str] = payload["cmd"]
    os.environ.clear()
    os.environ.update(env)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    args = [a for a in cmd[1:] if a != "-u"]
    if args and args[0] == "-m":
        sys.argv = [args[1], *args[2:]]
        sys.path[0] = os.getcwd()
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    else:
        script = os.path.abspath(args[0])
        sys.argv = [args[0], *args[1:]]
        sys.path[0] = os.path.dirname(script)
        runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
