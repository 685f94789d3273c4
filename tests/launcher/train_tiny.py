"""Tiny gloo training script for the launcher tests and the rescale benchmark.

Every step: a 1-element all_reduce, then the heartbeat file gets the step number (what the
training helpers do), then rank 0 appends ``generation world_size step`` to ``--out/rank0.log``.
Each rank writes ``<pid> <parent pid>`` to ``--out/rank<R>.pids`` (the benchmark kills by it).
Fault injection (at most once per ``--out`` dir via marker files, unless ``--crash-always``):
``--crash-rank R --crash-step S`` exits 3; ``--hang-rank R --hang-step S`` stops making progress.
"""

from __future__ import annotations

import argparse
import datetime
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=0, help="0: run until stopped")
    p.add_argument("--step-time", type=float, default=0.05)
    p.add_argument("--crash-rank", type=int, default=-1)
    p.add_argument("--crash-step", type=int, default=-1)
    p.add_argument("--crash-always", action="store_true", help="crash in every generation")
    p.add_argument("--hang-rank", type=int, default=-1)
    p.add_argument("--hang-step", type=int, default=-1)
    args = p.parse_args()
    out = Path(args.out)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    # Under plain torchrun (the benchmark's baseline) our variables are absent.
    generation = os.environ.get("ELASTIC_RDZV_GENERATION",
                                os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    beat = os.environ.get("ELASTIC_HEARTBEAT_FILE")
    heartbeat = Path(beat) if beat else None
    (out / f"rank{rank}.pids").write_text(f"{os.getpid()} {os.getppid()}")
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    tensor = torch.ones(1)
    step = 0
    while args.steps == 0 or step < args.steps:
        dist.all_reduce(tensor)
        step += 1
        if heartbeat is not None:
            heartbeat.write_text(str(step))
        if rank == 0:
            with open(out / "rank0.log", "a") as log:
                log.write(f"{generation} {world} {step}\n")
        if rank == args.crash_rank and step == args.crash_step:
            marker = out / "crashed"
            if args.crash_always or not marker.exists():
                marker.touch()
                os._exit(3)
        if rank == args.hang_rank and step == args.hang_step:
            marker = out / "hung"
            if not marker.exists():
                marker.touch()
                time.sleep(3600)
        time.sleep(args.step_time)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
