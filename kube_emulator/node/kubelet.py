"""The local cluster's kubelet: runs pods bound to emulated nodes as local process groups.

It watches pods over HTTP like a real kubelet and reports what happens through the pods'
``/status`` subresource: phase Pending -> Running -> Succeeded/Failed, the Ready and
ContainersReady conditions, ``containerStatuses`` (waiting/running/terminated with exit code,
signal, reason and termination message, restart counts), ``podIP``/``hostIP`` 127.0.0.1.
How a container becomes a process is :mod:`~kube_emulator.node.runtime`'s job.

Deletion follows Kubernetes' graceful protocol: once a pod has a ``deletionTimestamp`` the
kubelet sends SIGTERM to every container's process group, SIGKILL after
``deletionGracePeriodSeconds``, records the terminations and then deletes the pod with
``gracePeriodSeconds=0``, which removes it. A pod removed outright (force delete) has its
processes SIGKILLed at once. ``restartPolicy`` Always/OnFailure restart a container in place
with a growing back-off, Never (what the operator uses) leaves the pod Failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
from collections.abc import Container
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kube_emulator.apiserver.remotecommand import ExecRefused, ExecRequest
from kube_emulator.client import (
    ApiClient,
    ApiError,
    informer,
    record_event,
    resource_path,
    wait_event,
)
from kube_emulator.node.runtime import (
    DEFAULT_SETTINGS,
    POD_IP,
    ContainerConfigError,
    ContainerProcess,
    RuntimeSettings,
    Termination,
    container_argv,
    container_env,
    container_processes,
    container_volumes,
    map_termination_path,
)
from kube_emulator.times import now_rfc3339 as now

log = logging.getLogger(__name__)
Obj = dict[str, Any]
PodKey = tuple[str, str]  # (namespace, name)
COMPONENT = "kubelet"
SHUTDOWN_GRACE = 5.0
RESTART_BACKOFF = (1.0, 2.0, 4.0, 8.0, 16.0)


@dataclass(eq=False)
class _ContainerRun:
    spec: Obj
    process: ContainerProcess | None = None
    state: Obj = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: Obj = field(default_factory=dict)
    restarts: int = 0
    started_at: str = ""
    done: Termination | None = None

    @property
    def name(self) -> str:
        return str(self.spec.get("name", ""))

    def status(self) -> Obj:
        running = "running" in self.state
        return {"name": self.name, "image": str(self.spec.get("image", "")), "imageID": "",
                "containerID": f"local://{self.process.pid}" if self.process else "",
                "ready": running, "started": running, "restartCount": self.restarts,
                "state": self.state, "lastState": self.last_state}


@dataclass(eq=False)
class _PodRun:
    pod: Obj
    directory: Path
    containers: list[_ContainerRun]
    deleting: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    start_time: str = ""

    @property
    def key(self) -> PodKey:
        meta = self.pod["metadata"]
        return meta.get("namespace", ""), meta["name"]

    @property
    def uid(self) -> str:
        return str(self.pod["metadata"].get("uid", ""))


class Kubelet:
    """Runs the pods bound to ``nodes`` (None: every node) under ``state_dir/pods``.

    ``cwd`` is every container's working directory (images do not exist here, so a job's
    files are looked up relative to it, normally the project root); ``settings`` say how the
    product's containers find their termination-message file. Guarantees: each pod UID
    is run at most once; a pod's log is ``log_path(namespace, name, container)`` (truncated
    when a pod of that name starts again); :meth:`shutdown` leaves no process behind.
    """

    def __init__(self, client: ApiClient, state_dir: Path, cwd: Path,
                 nodes: Container[str] | None = None,
                 settings: RuntimeSettings = DEFAULT_SETTINGS) -> None:
        self.client = client
        self.settings = settings
        self.state_dir = Path(state_dir)
        self.cwd = Path(cwd)
        self.nodes = nodes
        self._runs: dict[str, _PodRun] = {}  # by uid
        # UIDs whose run ended: later (older) events about them must not start them again.
        self._finished: set[str] = set()

    # ----- files ------------------------------------------------------------------------
    @property
    def claims_dir(self) -> Path:
        """Where PersistentVolumeClaims live: ``<claims_dir>/<namespace>/<claim>``."""
        return self.state_dir / "volumes"

    def pod_dir(self, namespace: str, name: str) -> Path:
        """Where a pod's logs and termination messages live."""
        return self.state_dir / "pods" / namespace / name

    def log_path(self, namespace: str, name: str, container: str | None = None) -> Path:
        """The log file of a pod's container (its first container when None)."""
        if container is None:
            run = self._find(namespace, name)
            container = run.containers[0].name if run and run.containers else None
        if container is None:
            logs = sorted(self.pod_dir(namespace, name).glob("*.log"))
            return logs[0] if logs else self.pod_dir(namespace, name) / "main.log"
        return self.pod_dir(namespace, name) / f"{container}.log"

    def log_source(self, namespace: str, name: str, query: dict[str, str]) -> str:
        """``pods/log`` for the API server: ``container`` and ``tailLines`` are honoured."""
        path = self.log_path(namespace, name, query.get("container") or None)
        try:
            text = path.read_text(errors="replace")
        except OSError:
            return ""
        tail = query.get("tailLines")
        if tail and tail.isdigit():
            lines = text.splitlines(keepends=True)
            text = "".join(lines[-int(tail):]) if int(tail) else ""
        return text

    # ----- chaos and inspection -----------------------------------------------------------
    def _find(self, namespace: str, name: str) -> _PodRun | None:
        return next((r for r in self._runs.values() if r.key == (namespace, name)), None)

    def pids(self, name: str, namespace: str = "default") -> list[int]:
        """Every live process of the pod (its containers' process groups, the commands exec'd
        in them, and their descendants)."""
        run = self._find(namespace, name)
        leaders = {p.pid for c in run.containers if c.process
                   for p in (c.process.process, *c.process.execs) if p is not None} \
            if run else set()
        return container_processes(leaders) if leaders else []

    def kill_pod(self, name: str, sig: int = signal.SIGKILL, namespace: str = "default", *,
                 children_only: bool = False) -> int:
        """Send ``sig`` to the pod's processes, as a crash would; returns how many were hit.

        ``children_only`` spares each container's main process (for a pod running the
        launcher: kills the training processes and lets the agent react).
        """
        run = self._find(namespace, name)
        if run is None:
            return 0
        leaders = {c.process.pid for c in run.containers if c.process}
        hit = 0
        for pid in self.pids(name, namespace):
            if children_only and pid in leaders:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
                hit += 1
        return hit

    # ----- control loop -------------------------------------------------------------------
    async def run(self, ready: asyncio.Event | None = None) -> None:
        """Watch bound pods until cancelled; ``ready`` is set after the first listing."""
        await informer(self.client, "/api/v1/pods", self._on_event, ready=ready,
                       fieldSelector="spec.nodeName!=")

    async def _on_event(self, kind: str, pod: Obj) -> None:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        uid = str(meta.get("uid", ""))
        run = self._runs.get(uid)
        if kind == "DELETED":
            self._finished.discard(uid)
            if run is not None:
                run.pod = pod
                for c in run.containers:
                    if c.process:
                        c.process.signal(signal.SIGKILL)
                run.deleting.set()
            return
        if self.nodes is not None and spec.get("nodeName") not in self.nodes:
            return
        if run is not None:
            run.pod = pod
            if meta.get("deletionTimestamp"):
                run.deleting.set()
            return
        if meta.get("deletionTimestamp"):
            # Not running here (finished, or never started by this kubelet): nothing to stop.
            await self._remove(pod)
            return
        if uid in self._finished or (pod.get("status") or {}).get("phase") in (
                "Succeeded", "Failed"):
            return
        directory = self.pod_dir(meta.get("namespace", ""), meta["name"])
        run = _PodRun(pod, directory, [_ContainerRun(c) for c in spec.get("containers") or ()])
        self._runs[uid] = run
        run.task = asyncio.create_task(self._lifecycle(run), name=f"pod {meta['name']}")

    async def _lifecycle(self, run: _PodRun) -> None:
        namespace, name = run.key
        try:
            run.start_time = now()
            await self._report(run, "Pending")
            for container in run.containers:
                await self._start(run, container)
            if any(c.process for c in run.containers):
                await self._report(run, "Running")
            await self._supervise(run)
            if run.deleting.is_set():
                await self._remove(run.pod)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("pod %s/%s: kubelet failure", namespace, name)
        finally:
            for container in run.containers:
                if container.process:
                    container.process.signal(signal.SIGKILL)
            self._runs.pop(run.uid, None)
            self._finished.add(run.uid)
            shutil.rmtree(run.directory / "volumes", ignore_errors=True)  # emptyDirs go too

    async def _start(self, run: _PodRun, container: _ContainerRun) -> None:
        term_file = run.directory / f"{container.name}.termination-log"
        log_file = run.directory / f"{container.name}.log"
        run.directory.mkdir(parents=True, exist_ok=True)
        try:
            await self._check_claims(run.pod)
            volumes = container_volumes(run.pod, container.spec, self.claims_dir, run.directory)
            argv = map_termination_path(container.spec, term_file, container_argv(container.spec))
            env = container_env(run.pod, container.spec, term_file, settings=self.settings)
            process = ContainerProcess(
                volumes.argv(argv), volumes.env(env, container.spec), self.cwd, log_file,
                term_file, str(container.spec.get("terminationMessagePolicy") or "File"),
                volumes)
            await process.start()
        except (ContainerConfigError, OSError) as exc:
            # What a runtime reports when it cannot start the process (e.g. no such program).
            container.done = Termination(128, None, "StartError", str(exc))
            container.state = {"terminated": container.done.state(now(), now())}
            log.warning("pod %s/%s container %s: cannot start: %s", *run.key, container.name,
                        exc)
            await record_event(self.client, run.pod, "Failed", f"Error: {exc}",
                               component=COMPONENT, event_type="Warning")
            return
        container.process = process
        container.started_at = now()
        container.done = None
        container.state = {"running": {"startedAt": container.started_at}}
        log.info("pod %s/%s container %s: started pid %s", *run.key, container.name,
                 process.pid)
        await record_event(self.client, run.pod, "Started",
                           f"Started container {container.name}", component=COMPONENT)

    async def _check_claims(self, pod: Obj) -> None:
        """ContainerConfigError naming a claim the pod mounts that does not exist (a real
        kubelet waits for it; failing the start says which claim is missing)."""
        namespace = pod["metadata"].get("namespace", "")
        for volume in (pod.get("spec") or {}).get("volumes") or ():
            claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            if claim is None:
                continue
            try:
                await self.client.get(resource_path("persistentvolumeclaims", namespace,
                                                    str(claim)))
            except ApiError as exc:
                if exc.code != 404:
                    raise
                raise ContainerConfigError(
                    f'volume {volume.get("name")!r}: persistentvolumeclaim "{claim}" not found '
                    f"in namespace {namespace!r} (create the claim first)") from None

    def exec_target(self, request: ExecRequest) -> ContainerProcess:
        """``pods/exec`` for the API server: the running container the request names (the
        pod's first when none is named), see :meth:`ContainerProcess.exec`."""
        run = self._find(request.namespace, request.pod)
        if run is None:
            raise ExecRefused(400, f"pod {request.pod} is not running on this cluster's "
                                   "kubelet (not bound yet, or finished)")
        names = [c.name for c in run.containers]
        name = request.container or (names[0] if names else "")
        container = next((c for c in run.containers if c.name == name), None)
        if container is None:
            raise ExecRefused(400, f"container {name} is not valid for pod {request.pod}")
        if container.process is None or "running" not in container.state:
            raise ExecRefused(400, f"container {name} of pod {request.pod} is not running "
                                   f"(state {sorted(container.state)})")
        return container.process

    async def _supervise(self, run: _PodRun) -> None:
        policy = str((run.pod.get("spec") or {}).get("restartPolicy") or "Always")
        waits: dict[asyncio.Task[Termination], _ContainerRun] = {
            asyncio.create_task(c.process.wait()): c for c in run.containers if c.process}
        deleting = asyncio.create_task(run.deleting.wait())
        try:
            while waits:
                done, _ = await asyncio.wait([*waits, deleting],
                                             return_when=asyncio.FIRST_COMPLETED)
                if deleting in done:
                    await self._stop_all(run, waits)
                    break
                for task in done:
                    container = waits.pop(task)
                    result = task.result()
                    self._record(run, container, result)
                    if self._restarts(policy, result) and not run.deleting.is_set():
                        waits[asyncio.create_task(self._restart(run, container))] = container
                if waits:
                    await self._report(run, "Running")
        finally:
            deleting.cancel()
        await self._report(run, _final_phase(run))

    async def _restart(self, run: _PodRun, container: _ContainerRun) -> Termination:
        delay = RESTART_BACKOFF[min(container.restarts, len(RESTART_BACKOFF) - 1)]
        container.last_state = container.state
        container.restarts += 1
        container.state = {"waiting": {"reason": "CrashLoopBackOff",
                                       "message": f"back-off {delay:g}s restarting failed "
                                                  f"container={container.name}"}}
        await self._report(run, "Running")
        if await wait_event(run.deleting, delay):
            return container.done or Termination(0, None, "Completed", "")
        await self._start(run, container)
        await self._report(run, "Running")
        if container.process is None:
            assert container.done is not None
            return container.done
        return await container.process.wait()

    @staticmethod
    def _restarts(policy: str, result: Termination) -> bool:
        return policy == "Always" or (policy == "OnFailure" and result.exit_code != 0)

    def _record(self, run: _PodRun, container: _ContainerRun, result: Termination) -> None:
        container.done = result
        container.state = {"terminated": result.state(container.started_at, now())}
        log.info("pod %s/%s container %s: exited %s (%s)", *run.key, container.name,
                 result.exit_code, result.reason)

    async def _stop_all(self, run: _PodRun,
                        waits: dict[asyncio.Task[Termination], _ContainerRun]) -> None:
        grace = float(run.pod["metadata"].get("deletionGracePeriodSeconds") or 0)
        log.info("pod %s/%s: deleting, SIGTERM (grace %gs)", *run.key, grace)
        for container in waits.values():
            await record_event(self.client, run.pod, "Killing",
                               f"Stopping container {container.name}", component=COMPONENT)
        await asyncio.gather(*(c.process.stop(grace) for c in waits.values() if c.process))
        for task, container in waits.items():
            try:
                result = await task
            except asyncio.CancelledError:
                result = container.done or Termination(137, signal.SIGKILL, "Error", "")
            self._record(run, container, result)

    async def _report(self, run: _PodRun, phase: str) -> None:
        """Write the pod's status; a pod already gone is not an error."""
        namespace, name = run.key
        ready = phase == "Running" and all("running" in c.state for c in run.containers)
        stamp = now()
        ready_reason = {} if ready or phase != "Succeeded" else {"reason": "PodCompleted"}
        wanted = {
            # Bound, so scheduled; stated here because a merge patch replaces the whole list.
            "PodScheduled": {"status": "True"},
            "Initialized": {"status": "True"},
            "Ready": {"status": str(ready), **ready_reason},
            "ContainersReady": {"status": str(ready), **ready_reason},
        }
        conditions = _merge_conditions((run.pod.get("status") or {}).get("conditions") or [],
                                       wanted, stamp)
        status = {"phase": phase, "hostIP": POD_IP, "podIP": POD_IP,
                  "podIPs": [{"ip": POD_IP}], "startTime": run.start_time,
                  "conditions": conditions,
                  "containerStatuses": [c.status() for c in run.containers]}
        try:
            run.pod = await self.client.patch(
                resource_path("pods", namespace, name, "status"), {"status": status})
        except ApiError as exc:
            if exc.code != 404:
                raise

    async def _remove(self, pod: Obj) -> None:
        meta = pod["metadata"]
        try:
            await self.client.delete(resource_path("pods", meta.get("namespace"), meta["name"]),
                                     gracePeriodSeconds=0,
                                     preconditions={"uid": meta.get("uid")})
        except ApiError as exc:
            if exc.code not in (404, 409):
                raise

    async def shutdown(self) -> None:
        """Stop every pod's processes (SIGTERM, SIGKILL after a few seconds) without writing
        to the API server, which may already be gone."""
        runs = list(self._runs.values())
        await asyncio.gather(*(c.process.stop(SHUTDOWN_GRACE) for r in runs
                               for c in r.containers if c.process), return_exceptions=True)
        for run in runs:
            if run.task is not None:
                run.task.cancel()
        for run in runs:
            if run.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await run.task


def _merge_conditions(current: list[Obj], wanted: dict[str, Obj], stamp: str) -> list[Obj]:
    """Conditions by type: keep others (PodScheduled), move lastTransitionTime on change."""
    out: list[Obj] = []
    seen: set[str] = set()
    for cond in current:
        kind = cond.get("type", "")
        if kind in wanted:
            seen.add(kind)
            new = {"type": kind, **wanted[kind]}
            changed = cond.get("status") != new["status"]
            new["lastTransitionTime"] = stamp if changed else cond.get("lastTransitionTime",
                                                                       stamp)
            out.append(new)
        else:
            out.append(cond)
    out.extend({"type": k, **v, "lastTransitionTime": stamp} for k, v in wanted.items()
               if k not in seen)
    return out


def _final_phase(run: _PodRun) -> str:
    """Succeeded when every container ended with exit code 0, else Failed."""
    if all(c.done is not None and c.done.exit_code == 0 for c in run.containers):
        return "Succeeded"
    return "Failed"

