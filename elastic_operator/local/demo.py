"""``elastic-operator local demo``: the README's main command.

Starts a private embedded cluster, applies the example ElasticJob, shows live progress (world
size, step, loss, recent events), optionally injects chaos (a worker SIGKILLed at step N, GPUs
added or removed at step M), prints a summary (steps, resizes, wall time, final loss; after
``--add-gpus-at-step`` also how the grow went, see ``resize_report``) and tears everything
down. Exit code 0 when the job succeeded. Progress comes from the training
script's JSON step lines in the worker pods' logs and from the job's status.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from elastic_operator.api.kube import TERMINAL_PHASES
from elastic_operator.kube_client import ApiException, reason, status_message
from elastic_operator.labels import API_VERSION, GROUP, JOB_NAME, REPLICA_INDEX, VERSION
from elastic_operator.local import kubectl
from elastic_operator.local.cluster import DEFAULT_STATE_DIR, ClusterConfig, LocalCluster
from elastic_operator.local.resize_report import StepEvent, grow_report, parse_step_line
from launcher.etcd_client import make_client
from launcher.etcd_session import ETCD_ERRORS

DEFAULT_JOB_FILE = Path("examples/elastic-job.yaml")
Obj = dict[str, Any]


def configure(parser: argparse.ArgumentParser) -> None:
    """Options of ``elastic-operator local demo``."""
    parser.add_argument("-f", "--filename", type=Path, default=DEFAULT_JOB_FILE,
                        help="the ElasticJob to run (default: %(default)s)")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR / "demo",
                        help="the demo cluster's files (default: %(default)s)")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--gpus-per-node", type=int, default=1)
    parser.add_argument("--kill-worker-at-step", type=int, metavar="N",
                        help="SIGKILL one worker pod's processes once training reaches step N")
    parser.add_argument("--add-gpus-at-step", type=int, metavar="M",
                        help="add GPUs to the first node at step M (the job grows into them)")
    parser.add_argument("--add-gpus", type=int, default=2, metavar="K",
                        help="how many GPUs --add-gpus-at-step adds (default: %(default)s)")
    parser.add_argument("--remove-gpus-at-step", type=int, metavar="M",
                        help="take GPUs away at step M (pods using them are evicted)")
    parser.add_argument("--remove-gpus", type=int, default=1, metavar="K",
                        help="how many GPUs --remove-gpus-at-step removes (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=900.0, metavar="SECONDS",
                        help="give up after this long (default: %(default)s)")
    parser.add_argument("--plain", action="store_true",
                        help="print progress lines instead of a live table (automatic when "
                             "stdout is not a terminal)")


@dataclass
class Progress:
    """What the demo knows about the run; updated from logs, status and events."""

    step: int = 0
    epoch: int = 0
    loss: float | None = None
    final_loss: float | None = None
    world_size: int = 0
    generation: int = 0
    world_sizes: list[int] = field(default_factory=list)
    phase: str = "Pending"
    ready: int = 0
    desired: int = 0
    restarts: int = 0
    events: list[str] = field(default_factory=list)
    chaos: list[str] = field(default_factory=list)
    offsets: dict[str, int] = field(default_factory=dict)

    generations: set[int] = field(default_factory=set)
    step_events: list[StepEvent] = field(default_factory=list)  # on time.monotonic()

    @property
    def resizes(self) -> int:
        """How often the world size changed after the first formation."""
        return sum(1 for a, b in zip(self.world_sizes, self.world_sizes[1:], strict=False)
                   if a != b)

    def read_line(self, line: str) -> None:
        """Take in one log line; lines that are not the script's JSON events are ignored."""
        if not line.startswith("{"):
            return
        step = parse_step_line(line, time.monotonic())
        if step is not None:
            self.step_events.append(step)
        try:
            event = json.loads(line)
        except ValueError:
            return
        if event.get("event") == "step" and int(event.get("step", 0)) >= self.step:
            self.step = int(event["step"])
            self.epoch = int(event.get("epoch", self.epoch))
            self.loss = float(event["loss"]) if "loss" in event else self.loss
            self.generation = int(event.get("generation", self.generation))
            self.generations.add(self.generation)
            self._world(int(event.get("world_size", self.world_size)))
        elif event.get("event") == "start":
            self._world(int(event.get("world_size", self.world_size)))
        elif event.get("event") == "done" and "loss" in event:
            self.final_loss = float(event["loss"])

    def _world(self, size: int) -> None:
        self.world_size = size
        if size and (not self.world_sizes or self.world_sizes[-1] != size):
            self.world_sizes.append(size)


class Demo:
    """One demo run against a started LocalCluster."""

    def __init__(self, cluster: LocalCluster, args: argparse.Namespace, job: Obj) -> None:
        self.cluster = cluster
        self.args = args
        self.job = job
        self.name = job["metadata"]["name"]
        self.namespace = job["metadata"].get("namespace") or "default"
        self.progress = Progress()
        self.started = time.monotonic()
        self._done_chaos: set[str] = set()
        self.plain = False
        self.gpus_added_at: float | None = None
        self.pods_seen: dict[str, float] = {}  # pod name -> when a poll first listed it
        self.registrations: Registrations | None = None

    async def poll(self) -> None:
        """Refresh progress from the job status, the workers' logs and the events."""
        kube = self.cluster.api
        p = self.progress
        job = await kube.call(kube.custom.get_namespaced_custom_object, GROUP, VERSION,
                              self.namespace, "elasticjobs", self.name)
        status = job.get("status") or {}
        p.phase = str(status.get("phase") or "Pending")
        p.ready = int(status.get("readyReplicas") or 0)
        p.desired = int((job.get("spec") or {}).get("replicas") or 0)
        p.restarts = int(status.get("restarts") or 0)
        pods = (await kube.call(kube.core.list_namespaced_pod, self.namespace,
                                label_selector=f"{JOB_NAME}={self.name}"))["items"]
        for pod in pods:
            self.pods_seen.setdefault(pod["metadata"]["name"], time.monotonic())
        self._read_logs()
        events = (await kube.call(kube.core.list_namespaced_event, self.namespace))["items"]
        events.sort(key=lambda e: e["metadata"].get("resourceVersion", "0").zfill(20))
        p.events = [f"{e.get('reason')}: {e['involvedObject'].get('name')}: {e.get('message')}"
                    for e in events[-6:]]

    def _read_logs(self) -> None:
        for pod in self.pods_seen:
            self._read_log(pod)

    def _read_log(self, pod: str) -> None:
        assert self.cluster.kubelet is not None
        path = self.cluster.kubelet.log_path(self.namespace, pod)
        offset = self.progress.offsets.get(str(path), 0)
        try:
            with open(path, "rb") as handle:
                size = handle.seek(0, 2)
                if size < offset:  # a new pod of that name truncated the log
                    offset = 0
                handle.seek(offset)
                data = handle.read()
        except OSError:
            return
        complete = data.rfind(b"\n") + 1
        self.progress.offsets[str(path)] = offset + complete
        for line in data[:complete].decode(errors="replace").splitlines():
            self.progress.read_line(line.strip())

    async def chaos(self) -> None:
        """Inject each requested fault once, when training reaches its step."""
        args, step = self.args, self.progress.step
        assert self.cluster.kubelet is not None and self.cluster.nodes is not None
        if self._due("kill", args.kill_worker_at_step, step):
            kube = self.cluster.api
            pods = (await kube.call(kube.core.list_namespaced_pod, self.namespace,
                                    label_selector=f"{JOB_NAME}={self.name}"))["items"]
            running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
            if running:
                victim = max(running, key=lambda p: int(p["metadata"]["labels"].get(
                    REPLICA_INDEX, 0)))["metadata"]["name"]
                self.cluster.kubelet.kill_pod(victim, signal.SIGKILL, self.namespace)
                self._log_chaos(f"step {step}: SIGKILL worker pod {victim}")
        if self._due("add", args.add_gpus_at_step, step):
            node = await self.cluster.nodes.add_gpus(args.add_gpus)
            self.gpus_added_at = time.monotonic()
            self._log_chaos(f"step {step}: +{args.add_gpus} GPU(s) on {node}")
        if self._due("remove", args.remove_gpus_at_step, step):
            evicted = await self.cluster.nodes.remove_gpus(args.remove_gpus)
            self._log_chaos(f"step {step}: -{args.remove_gpus} GPU(s); evicted "
                            f"{', '.join(evicted) or 'nothing'}")

    def _due(self, key: str, at: int | None, step: int) -> bool:
        if at is None or key in self._done_chaos or step < at:
            return False
        self._done_chaos.add(key)
        return True

    def _log_chaos(self, text: str) -> None:
        self.progress.chaos.append(text)
        if self.plain:
            print(f"chaos: {text}", flush=True)

    def render(self) -> Group:
        """The live view."""
        p = self.progress
        table = Table(title=f"ElasticJob {self.namespace}/{self.name}", expand=False)
        # Short headers, no wrapping: the table must fit an 80-column terminal.
        for column in ("phase", "world", "ready", "step", "epoch", "loss", "restarts", "time"):
            table.add_column(column, justify="right", no_wrap=True)
        table.add_row(p.phase, str(p.world_size), f"{p.ready}/{p.desired}", str(p.step),
                      str(p.epoch), "-" if p.loss is None else f"{p.loss:.4f}", str(p.restarts),
                      f"{time.monotonic() - self.started:.0f}s")
        lines = [Text(f"chaos: {c}", style="bold red") for c in p.chaos[-3:]]
        lines += [Text(e, style="dim") for e in p.events]
        return Group(table, *lines)

    def summary(self) -> str:
        """The closing report."""
        p = self.progress
        loss = p.final_loss if p.final_loss is not None else p.loss
        sizes = " -> ".join(str(s) for s in p.world_sizes) or "-"
        return (f"job {self.namespace}/{self.name}: {p.phase}\n"
                f"  steps: {p.step}\n"
                f"  resizes: {p.resizes} (world size {sizes}); rendezvous rounds: "
                f"{len(p.generations)}\n"
                f"  worker restarts: {p.restarts}\n"
                f"  wall time: {time.monotonic() - self.started:.1f}s\n"
                f"  final loss: {'-' if loss is None else f'{loss:.4f}'}"
                + "".join(f"\n  {line}" for line in self.grow_lines()))

    def grow_lines(self) -> list[str]:
        """After ``--add-gpus-at-step``: the grow report (``resize_report.grow_report``) over
        the step lines (stamped as read, every 0.1 s) and the start-up of the pods created
        after the GPUs appeared (listed at the next 0.5 s poll until their agent's node key
        was seen in etcd, polled every 0.1 s)."""
        if self.gpus_added_at is None:
            return []
        registered = self.registrations.first if self.registrations is not None else {}
        startups = [at - seen for pod, seen in self.pods_seen.items()
                    if seen > self.gpus_added_at
                    for node, at in registered.items() if node.startswith(f"{pod}-")]
        return grow_report(self.progress.step_events, self.gpus_added_at, startups).lines()

    async def run(self) -> bool:
        """Apply the job and follow it until it ends; True when it Succeeded."""
        console = Console()
        self.plain = self.args.plain or not console.is_terminal
        if self.cluster.etcd is not None and self.args.add_gpus_at_step is not None:
            self.registrations = Registrations(self.cluster.etcd.endpoint)
        await kubectl.apply(self.cluster.api, [self.job], self.namespace)
        deadline = self.started + self.args.timeout
        last_printed = -1
        live = None if self.plain else Live(self.render(), console=console,
                                            refresh_per_second=4)
        if live is not None:
            live.start()
        try:
            while time.monotonic() < deadline:
                await self.poll()
                await self.chaos()
                p = self.progress
                if live is not None:
                    live.update(self.render())
                elif p.step // 10 != last_printed:
                    last_printed = p.step // 10
                    loss = "-" if p.loss is None else f"{p.loss:.4f}"
                    print(f"step {p.step} epoch {p.epoch} world size {p.world_size} "
                          f"loss {loss} phase {p.phase}", flush=True)
                if p.phase in TERMINAL_PHASES:
                    return p.phase == "Succeeded"
                operator = self.cluster.operator
                if operator is not None and operator.returncode is not None:
                    p.phase = f"{p.phase} (the operator exited with {operator.returncode})"
                    return False
                for _ in range(5):  # logs more often than the API: step times to 0.1 s
                    await asyncio.sleep(0.1)
                    self._read_logs()
                    if self.registrations is not None:
                        await asyncio.to_thread(self.registrations.poll)
            self.progress.phase = f"{self.progress.phase} (timed out)"
            return False
        finally:
            if live is not None:
                live.stop()
            if self.registrations is not None:
                self.registrations.close()


class Registrations:
    """When each agent first registered in etcd (its rendezvous node key,
    ``/elastic/<rdzv id>/nodes/<node id>``, appeared), on this process's monotonic clock, to
    the resolution of ``poll``'s callers. Node ids start with the pod's name (the agent's
    ``HOSTNAME``)."""

    def __init__(self, endpoint: str) -> None:
        self.first: dict[str, float] = {}
        self._client = make_client(endpoint, timeout=2.0)

    def poll(self) -> None:
        """Take in the node keys there now (blocking: run it in a thread)."""
        try:
            listed = self._client.get_prefix("/elastic/", keys_only=True)
            at = time.monotonic()
            for _, meta in listed:
                parts = meta.key.decode(errors="replace").split("/")
                if len(parts) == 5 and parts[3] == "nodes":
                    self.first.setdefault(parts[4], at)
        except ETCD_ERRORS:
            return  # etcd restarting: the next poll sees the keys, a little late

    def close(self) -> None:
        self._client.close()


def load_job(path: Path, state_dir: Path) -> Obj:
    """The ElasticJob of ``path``, with its checkpoints moved into the demo's state dir (a
    previous run's checkpoints would otherwise make this one resume finished)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise kubectl.UsageError(f"cannot read the job file {path}: {exc.strerror}; run from "
                                 "the repository root or pass -f FILE") from None
    docs = kubectl.load_manifests(text, str(path))
    jobs = [d for d in docs if d.get("kind") == "ElasticJob" and d.get("apiVersion") ==
            API_VERSION]
    if len(jobs) != 1:
        raise kubectl.UsageError(f"{path}: expected exactly one {API_VERSION} ElasticJob, found "
                                 f"{len(jobs)}")
    job = jobs[0]
    checkpoints = state_dir.resolve() / "checkpoints" / job["metadata"]["name"]
    shutil.rmtree(checkpoints, ignore_errors=True)
    job.setdefault("spec", {}).setdefault("checkpoint", {})["directory"] = str(checkpoints)
    return job


async def _main(args: argparse.Namespace) -> int:
    job = load_job(args.filename, args.state_dir)
    config = ClusterConfig(state_dir=args.state_dir, nodes=args.nodes,
                           gpus_per_node=args.gpus_per_node)
    print(f"starting the local cluster ({args.nodes} node(s) x {args.gpus_per_node} GPU(s), "
          f"etcd, operator) in {args.state_dir} ...", flush=True)
    async with LocalCluster(config) as cluster:
        demo = Demo(cluster, args, job)
        try:
            ok = await demo.run()
        except ApiException as exc:
            print(f"Error from server ({reason(exc) or exc.status}): {status_message(exc)}",
                  file=sys.stderr)
            return 1
        print(demo.summary(), flush=True)
        if not ok:
            print(f"see the logs under {args.state_dir} (logs/operator.log, pods/)",
                  file=sys.stderr)
        print("tearing down ...", flush=True)
    return 0 if ok else 1


def execute(args: argparse.Namespace) -> int:
    """Run the demo; Ctrl-C tears the cluster down and exits 130."""
    try:
        return asyncio.run(_main(args))
    except kubectl.UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; the cluster was torn down", file=sys.stderr)
        return 130
