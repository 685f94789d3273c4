"""Measure the survivors' step gap of an in-place resize under real agents (not a test).

    .venv/bin/python tests/launcher/measure_inplace.py join|leave|kill [--state-mb N]

Starts a fresh etcd, two agents running ``tests/launcher/train_inplace.py`` (``--step-time
0.05``), then a third; ``leave`` sends SIGTERM to the third agent, ``kill`` SIGKILLs its whole
process tree. Prints the largest gap between two consecutive committed steps (the index log's
commit times) around the change of world size, the audit's verdict and the redone steps.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from kube_emulator.etcd import EtcdServer  # noqa: E402
from launcher.training.audit import (  # noqa: E402
    check_exactly_once,
    committed_steps,
    read_records,
    redone_steps,
)

EPOCHS, DATASET = 60, 512


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=("join", "leave", "kill"))
    p.add_argument("--state-mb", type=int, default=0)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="inplace-gaps-"))
    log = work / "indices.jsonl"
    env = dict(os.environ, PYTHONPATH=str(REPO), GRPC_VERBOSITY="ERROR",
               ELASTIC_INDEX_LOG=str(log), ELASTIC_CHECKPOINT_DIR=str(work / "ckpt"),
               ELASTIC_CHECKPOINT_INTERVAL="100000")

    def start(etcd: EtcdServer, node: str) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "launcher", "--nnodes", "1:3", "--nproc-per-node", "1",
               "--rdzv-endpoint", etcd.endpoint, "--rdzv-id", "gaps", "--node-id", node,
               "--local-addr", "127.0.0.1", "--stop-timeout", "10",
               "--termination-log", str(work / f"term-{node}"),
               "--rdzv-conf", "lease_ttl=2,join_timeout=120",
               str(REPO / "tests/launcher/train_inplace.py"), f"--out={work}", "--no-states",
               f"--epochs={EPOCHS}", f"--dataset-size={DATASET}", "--step-time=0.05",
               f"--state-mb={args.state_mb}"]
        out = open(work / f"agent-{node}.log", "wb")  # noqa: SIM115
        return subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)

    def world() -> int:
        steps = [r for r in read_records(log) if r["event"] == "step"] if log.exists() else []
        if not steps:
            return 0
        last = max((r["step"], r["generation"]) for r in steps)
        return len({r["rank"] for r in steps if (r["step"], r["generation"]) == last})

    def wait(size: int) -> None:
        deadline = time.monotonic() + 180
        while world() != size:
            if time.monotonic() > deadline:
                raise SystemExit(f"no step at world {size}; logs in {work}")
            time.sleep(0.1)

    with EtcdServer() as etcd:
        procs = {n: start(etcd, n) for n in ("a", "b")}
        try:
            wait(2)
            procs["c"] = start(etcd, "c")
            wait(3)
            if args.mode != "join":
                time.sleep(2.0)
                os.killpg(procs["c"].pid,
                          signal.SIGTERM if args.mode == "leave" else signal.SIGKILL)
                wait(2)
            for proc in procs.values():
                proc.wait(600)
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
    records = read_records(log)
    commit = {}
    for r in records:
        if r["event"] == "step":
            key = (r["generation"], r["step"])
            commit[key] = min(commit.get(key, r["time"]), r["time"])
    lineage = committed_steps(records)
    times = [commit[(c.generation, c.step)] for c in lineage]
    sizes = {}
    for r in records:
        if r["event"] == "step":
            sizes.setdefault((r["generation"], r["step"]), set()).add(r["rank"])
    worlds = [len(sizes[(c.generation, c.step)]) for c in lineage]
    target = 3 if args.mode == "join" else 2
    first = next(i for i in range(1, len(worlds))
                 if worlds[i] == target and worlds[i - 1] != target)
    window = range(max(first - 5, 0), min(first + 5, len(times) - 1))
    around = [times[i + 1] - times[i] for i in window]
    steady = sorted(b - a for a, b in itertools.pairwise(times))[len(times) // 2]
    report = check_exactly_once(records, dataset_size=DATASET, epochs=EPOCHS)
    print(f"mode={args.mode} state_mb={args.state_mb} stall_s={max(around):.3f} "
          f"median_step_s={steady:.3f} exactly_once={report.ok} redone={len(redone_steps(records))}"
          f" logs={work}")


if __name__ == "__main__":
    main()
