"""Rescale benchmark: torchrun (c10d, defaults and tuned) and torchft against our launcher.

Part one, ``rescale``: the same training script for all (tests/launcher/train_tiny.py: a
1-element gloo all_reduce every 50 ms), ``--nnodes=1:3``, one process per node, all on
127.0.0.1. For each launcher:

- formation: two agents started together -> first training step at world size 2;
- shrink: one agent SIGKILLed together with its training process (a pod killed; under torchrun
  not the one hosting the c10d store, whose loss always ends the job) -> first step at world
  size 1;
- grow: a fresh job of two agents, a third agent started -> first step at world size 3
  (includes the newcomer's own interpreter start, the same for every launcher).

Part two, ``stalls`` (``bench/step_stalls.py``): ours (``python -m launcher ...
examples/train_elastic.py``, real etcd) and torchft (``bench/torchft_train.py``, the same task
under torchft's Manager, a Lighthouse started here) each run 2 members, then a third joins, it
leaves gracefully (SIGTERM), and one of the original two is SIGKILLed with its whole process
tree. Printed per system: the survivors' largest gap between two consecutive completed steps
around each event, the joiner's time from its start to the job's first step at world size 3,
and the per-step overhead: the median step time at world size 2 of a run with the script's
defaults minus that of the plain ``examples/train_ddp.py`` under ``torchrun --standalone``
(same model and data). torchft is optional (``pip install -e '.[bench]'``); without it its
column says so. When ``examples/train_elastic.py --help`` offers ``--state-mb``, the join is
repeated with 400 MB of extra state.

A scenario that does not recover within ``--limit`` seconds counts as ``--limit`` and is marked
``(cap)``. The last line is machine-readable, ours over torchrun with its defaults, then the
stalls in seconds (``nan``: not measured): ``shrink_ratio=<ours/torchrun>
grow_ratio=<ours/torchrun> join_stall_s=X leave_stall_s=Y kill_stall_s=Z
torchft_kill_stall_s=W``.

    .venv/bin/python bench/rescale.py [--limit 120] [--parts rescale stalls]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import step_stalls  # noqa: E402
from step_stalls import STEP_TIME, Stalls, System  # noqa: E402

from kube_emulator.etcd import EtcdServer  # noqa: E402

SCRIPT = REPO / "tests" / "launcher" / "train_tiny.py"
ELASTIC = REPO / "examples" / "train_elastic.py"
DDP = REPO / "examples" / "train_ddp.py"
TORCHFT_TRAIN = REPO / "bench" / "torchft_train.py"
TUNED_CONF = "last_call_timeout=2,keep_alive_interval=1,keep_alive_max_attempt=2"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Variant:
    name: str
    command: Callable[[str, Path, str], list[str]]  # (job id, out dir, node name) -> argv
    store_port: Callable[[str], int | None] = lambda job: None  # torchrun's c10d store port


class Job:
    """Agents of one job, each in its own process group; progress read from rank0.log."""

    def __init__(self, variant: Variant, workdir: Path, job_id: str) -> None:
        self.variant = variant
        self.out = workdir / job_id
        self.out.mkdir(parents=True)
        self.job_id = job_id
        self.agents: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, node: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO), GRPC_VERBOSITY="ERROR",
                   LOGLEVEL="WARNING")
        with open(self.out / f"agent-{node}.log", "wb") as log:
            self.agents[node] = subprocess.Popen(
                self.variant.command(self.job_id, self.out, node), cwd=REPO, env=env,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def rows(self) -> list[tuple[int, int]]:
        """(line number, world size) of every step logged by global rank 0."""
        try:
            lines = (self.out / "rank0.log").read_text().splitlines()
        except FileNotFoundError:
            return []
        return [(i, int(line.split()[1])) for i, line in enumerate(lines)
                if len(line.split()) == 3]

    def wait_world(self, world: int, limit: float, after_row: int = -1) -> float | None:
        """Seconds until a step at ``world`` after line ``after_row``; None past ``limit``."""
        start = time.monotonic()
        while time.monotonic() - start < limit:
            if any(i > after_row and w == world for i, w in self.rows()):
                return time.monotonic() - start
            time.sleep(0.05)
        return None

    def kill_node(self, node: str) -> None:
        """SIGKILL agent ``node`` and its training processes together (a pod killed)."""
        proc = self.agents.pop(node)
        workers = []
        for pids in self.out.glob("rank*.pids"):
            pid, ppid = map(int, pids.read_text().split())
            if _is_ancestor(proc.pid, ppid):
                workers.append(pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()

    def close(self) -> None:
        for proc in self.agents.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        # Orphaned training processes of torchrun die with their broken collectives; make sure.
        for pids in self.out.glob("rank*.pids"):
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pids.read_text().split()[0]), signal.SIGKILL)


def _listener_pid(port: int) -> int | None:
    """pid of the process listening on TCP ``port`` (Linux /proc), or None."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                    inodes.add(fields[9])
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return int(proc.name)
    return None


def _is_ancestor(ancestor: int, pid: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return False


def run_variant(variant: Variant, workdir: Path, limit: float) -> dict[str, float | None]:
    """formation, shrink, grow seconds for one launcher (None: not within ``limit``)."""
    results: dict[str, float | None] = {}
    job = Job(variant, workdir, f"{variant.name}-shrink")
    try:
        started = time.monotonic()
        job.start("a")
        job.start("b")
        formed = job.wait_world(2, limit)
        results["formation"] = None if formed is None else time.monotonic() - started
        if formed is None:
            results["shrink"] = None
        else:
            time.sleep(1.0)  # a few steady steps
            rows_before = len(job.rows())
            # Not the agent hosting torchrun's c10d store: killing that one always ends the
            # job; this gives torchrun its best case.
            port = variant.store_port(job.job_id)
            host = _listener_pid(port) if port else None
            victims = [n for n, p in job.agents.items()
                       if host is None or not _is_ancestor(p.pid, host)]
            job.kill_node(victims[-1])
            results["shrink"] = job.wait_world(1, limit, after_row=rows_before - 1)
    finally:
        job.close()
    job = Job(variant, workdir, f"{variant.name}-grow")
    try:
        job.start("a")
        job.start("b")
        if job.wait_world(2, limit) is None:
            results["grow"] = None
        else:
            time.sleep(1.0)
            rows_before = len(job.rows())
            job.start("c")
            results["grow"] = job.wait_world(3, limit, after_row=rows_before - 1)
    finally:
        job.close()
    return results


def _elastic_argv(etcd: str, script_args: list[str]) -> Callable[[str, int, Path], list[str]]:
    """Our launcher, one process per agent, on examples/train_elastic.py."""
    def argv(job: str, index: int, out: Path) -> list[str]:
        node = "abcdefgh"[index]
        return [sys.executable, "-m", "launcher", "--nnodes=1:3", "--nproc-per-node=1",
                f"--rdzv-endpoint={etcd}", f"--rdzv-id={job}", "--max-restarts=10",
                "--local-addr=127.0.0.1", f"--node-id={job}-{node}",
                f"--termination-log={out}/termination-{node}", str(ELASTIC), *script_args]
    return argv


def _lighthouse(min_replicas: int) -> Callable[[Path], tuple[subprocess.Popen[bytes],
                                                            dict[str, str]]]:
    """torchft's Lighthouse with the flags of torchft's own examples (its heartbeat timeout,
    5 s, is left at its default: it is what a lost replica group costs torchft)."""
    def start(out: Path) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
        port = free_port()
        binary = Path(sys.executable).with_name("torchft_lighthouse")
        with open(out / "lighthouse.log", "wb") as log:
            proc = subprocess.Popen(
                [str(binary), "--min_replicas", str(min_replicas), "--quorum_tick_ms", "100",
                 "--join_timeout_ms", "10000", "--bind", f"[::]:{port}"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return proc, {"TORCHFT_LIGHTHOUSE": f"http://127.0.0.1:{port}"}
    return start


def _torchft_argv(script_args: list[str]) -> Callable[[str, int, Path], list[str]]:
    def argv(job: str, index: int, out: Path) -> list[str]:
        return [sys.executable, str(TORCHFT_TRAIN), "--replica-id", str(index), *script_args]
    return argv


def run_stalls_part(etcd: str, workdir: Path, limit: float,
                    rounds: int) -> tuple[dict[str, Stalls], float | None, str]:
    """Part two: per system the stalls and step time; the baseline step time; the 400 MB
    join's line."""
    forever = ["--epochs", str(step_stalls.EPOCHS), "--step-time", str(STEP_TIME)]
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    ddp = System("ddp", lambda job, index, out: [
        torchrun, "--standalone", "--nproc-per-node=2", str(DDP)])
    systems = [(System("ours", _elastic_argv(etcd, forever),
                       env={"ELASTIC_CHECKPOINT_DIR": str(workdir / "ours-checkpoints")}),
                System("ours-defaults", _elastic_argv(etcd, [])))]
    if importlib.util.find_spec("torchft") is None:
        print("# torchft: skipped (not installed; pip install -e '.[bench]')", flush=True)
    else:
        # The step-time run waits for both groups (min 2): otherwise the first to start
        # trains its whole run alone before the second has imported torch.
        systems.append((System("torchft", _torchft_argv(["--replica-groups", "3", *forever]),
                               service=_lighthouse(1)),
                        System("torchft-defaults", _torchft_argv(["--replica-groups", "2"]),
                               service=_lighthouse(2))))
    # Step times: the systems in turn, ``rounds`` times, so a burst of load from elsewhere on
    # the machine hits one round of each rather than all of one system; the median round.
    times: dict[str, list[float]] = {}
    for round_ in range(rounds):
        for system, members in [(ddp, 1), *[(d, 2) for _, d in systems]]:
            median = step_stalls.run_step_time(system, workdir, limit, members,
                                               f"{system.name}-steps-{round_}")
            if median is not None:
                times.setdefault(system.name, []).append(median)
    print(f"# step times (ms, {rounds} rounds): " + "; ".join(
        f"{name} {' '.join(f'{t * 1000:.2f}' for t in ts)}" for name, ts in times.items()),
        flush=True)

    def step_time(name: str) -> float | None:
        return statistics.median(times[name]) if name in times else None

    baseline = step_time("ddp")
    results = {}
    for stalls_system, defaults_system in systems:
        started = time.monotonic()
        res = step_stalls.run_stalls(stalls_system, workdir, limit)
        res.step_time = step_time(defaults_system.name)
        results[stalls_system.name] = res
        print(f"# {stalls_system.name} stalls: done in {time.monotonic() - started:.0f}s",
              flush=True)
    help_text = subprocess.run([sys.executable, str(ELASTIC), "--help"], cwd=REPO,
                               capture_output=True, text=True, check=False).stdout
    if "--state-mb" not in help_text:
        big = "join with 400 MB of state: skipped (examples/train_elastic.py has no --state-mb)"
    else:
        gap = step_stalls.run_join_only(
            System("ours-400mb", _elastic_argv(etcd, [*forever, "--state-mb", "400"]),
                   env={"ELASTIC_CHECKPOINT_DIR": str(workdir / "ours-400mb-checkpoints")}),
            workdir, limit, "ours-400mb")
        big = f"join with 400 MB of state (ours): largest gap {_s(gap, limit)}"
    return results, baseline, big


def _s(value: float | None, limit: float) -> str:
    return f"{limit:.2f} (cap)" if value is None else f"{value:.2f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.2f} ms"


def print_stalls(results: dict[str, Stalls], baseline: float | None, limit: float) -> None:
    print(f"\nstep stalls, seconds (examples/train_elastic.py, --step-time {STEP_TIME}; "
          f"largest gap between steps around each event)")
    print(f"{'system':<10}{'join':>12}{'leave':>12}{'kill':>12}{'joiner 1st':>12}"
          f"{'step':>12}{'overhead':>12}")
    for name, res in results.items():
        overhead = (None if res.step_time is None or baseline is None
                    else res.step_time - baseline)
        print(f"{name:<10}{_s(res.join, limit):>12}{_s(res.leave, limit):>12}"
              f"{_s(res.kill, limit):>12}{_s(res.joiner_first_step, limit):>12}"
              f"{_ms(res.step_time):>12}{_ms(overhead):>12}")
    print(f"{'torchrun':<10}{'':>48}{_ms(baseline):>12}{'(baseline)':>12}")
    for name, res in results.items():
        print(f"{name}: {'; '.join(res.notes)}")
    print("step: median step time at world size 2 with the script's defaults (no --step-time), "
          "median of the rounds; overhead: minus the baseline (examples/train_ddp.py under "
          "torchrun)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=float, default=120.0,
                        help="seconds a scenario may take before it counts as not recovered")
    parser.add_argument("--only", choices=["torchrun", "torchrun-tuned", "ours"], action="append",
                        help="part rescale: run only these launchers (ratios need torchrun and "
                             "ours)")
    parser.add_argument("--parts", nargs="+", choices=["rescale", "stalls"],
                        default=["rescale", "stalls"], help="which parts to run (default: both)")
    parser.add_argument("--step-rounds", type=int, default=3,
                        help="part stalls: step-time runs per system (median taken)")
    parser.add_argument("--keep", action="store_true", help="keep the agents' logs (printed)")
    args = parser.parse_args()
    # A SIGTERM (e.g. from a CI timeout) still runs the cleanup in the finally blocks.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    workdir = Path(tempfile.mkdtemp(prefix="bench-rescale-"))
    script = [str(SCRIPT), "--step-time", "0.05"]
    c10d_port = {}

    def torchrun_cmd(conf: str) -> Callable[[str, Path, str], list[str]]:
        def cmd(job: str, out: Path, node: str) -> list[str]:
            port = c10d_port.setdefault(job, free_port())
            extra = [f"--rdzv-conf={conf}"] if conf else []
            return [torchrun, "--nnodes=1:3", "--nproc-per-node=1", "--rdzv-backend=c10d",
                    f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id={job}",
                    "--max-restarts=3", *extra, *script, "--out", str(out)]
        return cmd

    results = {}
    stalls: dict[str, Stalls] = {}
    baseline, big = None, ""
    with EtcdServer() as etcd:
        def ours_cmd(job: str, out: Path, node: str) -> list[str]:
            return [sys.executable, "-m", "launcher", "--nnodes=1:3", "--nproc-per-node=1",
                    f"--rdzv-endpoint={etcd.endpoint}", f"--rdzv-id={job}",
                    "--max-restarts=3", "--local-addr=127.0.0.1", f"--node-id={job}-{node}",
                    f"--termination-log={out}/termination-{node}", *script, "--out", str(out)]

        variants = [Variant("torchrun", torchrun_cmd(""), c10d_port.get),
                    Variant("torchrun-tuned", torchrun_cmd(TUNED_CONF), c10d_port.get),
                    Variant("ours", ours_cmd)]
        selected = [v for v in variants if not args.only or v.name in args.only]
        for variant in selected if "rescale" in args.parts else []:
            started = time.monotonic()
            results[variant.name] = run_variant(variant, workdir, args.limit)
            print(f"# {variant.name}: done in {time.monotonic() - started:.0f}s", flush=True)
        if "stalls" in args.parts:
            stalls, baseline, big = run_stalls_part(etcd.endpoint, workdir, args.limit,
                                                    args.step_rounds)

    def shown(value: float | None) -> str:
        return f"{args.limit:.1f} (cap)" if value is None else f"{value:.1f}"

    def capped(value: float | None) -> float:
        return args.limit if value is None else value

    if results:
        print(f"\nrescale benchmark, seconds (limit {args.limit:.0f} s; '(cap)': did not "
              "recover)")
        print(f"{'launcher':<16}{'formation':>14}{'shrink':>14}{'grow':>14}")
        for name, res in results.items():
            print(f"{name:<16}{shown(res['formation']):>14}{shown(res['shrink']):>14}"
                  f"{shown(res['grow']):>14}")
    if stalls:
        print_stalls(stalls, baseline, args.limit)
        print(big)
    if args.keep:
        print(f"# logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    last = []
    if "ours" in results and "torchrun" in results:
        ours = results["ours"]
        if "torchrun-tuned" in results:
            tuned = results["torchrun-tuned"]
            print(f"vs tuned torchrun: shrink "
                  f"{capped(ours['shrink']) / capped(tuned['shrink']):.2f} "
                  f"grow {capped(ours['grow']) / capped(tuned['grow']):.2f}")
        base = results["torchrun"]
        last += [f"shrink_ratio={capped(ours['shrink']) / capped(base['shrink']):.3f}",
                 f"grow_ratio={capped(ours['grow']) / capped(base['grow']):.3f}"]
    if stalls:
        def key(value: float | None) -> str:
            return f"{capped(value):.3f}"

        ours_stalls = stalls.get("ours", Stalls())
        torchft = stalls.get("torchft")
        last += [f"join_stall_s={key(ours_stalls.join)}",
                 f"leave_stall_s={key(ours_stalls.leave)}",
                 f"kill_stall_s={key(ours_stalls.kill)}",
                 "torchft_kill_stall_s=" + ("nan" if torchft is None else key(torchft.kill))]
    if last:
        print(" ".join(last))
    return 0


if __name__ == "__main__":
    sys.exit(main())
