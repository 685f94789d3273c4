"""How the local kubelet runs a container: a local process group instead of an image.

:func:`container_argv` and :func:`container_env` turn a container spec into a command line and
an environment; :class:`ContainerProcess` runs it in its own process group (so a signal reaches
the launcher *and* the training processes it spawned), writes stdout and stderr to a log file,
and turns the exit into a Kubernetes ``terminated`` state with the termination message.

Deliberate differences from a real container runtime, documented for users:

- the image is ignored; ``python``/``python3`` as argv[0] run the interpreter that runs the
  cluster (so a pod uses the project's virtual environment), other programs come from PATH;
- the process inherits the cluster's environment (PATH, virtualenv, ...) minus
  ``KUBECONFIG`` and the prefixes :class:`RuntimeSettings` names, then the container's
  ``env`` on top, so a shell's settings never leak into a job's configuration;
- the termination-message file (the container's ``terminationMessagePath``, and the variable
  :class:`RuntimeSettings` names, if any) is a per-pod file, read after the process exits;
- ``podIP`` is 127.0.0.1: pods reach each other on localhost, on distinct ports;
- volumes are directories, not mounts (a process has no mount namespace of its own): a
  ``persistentVolumeClaim`` is ``<claims dir>/<namespace>/<claim>`` (one directory per claim,
  shared by every pod that mounts it), an ``emptyDir`` a directory of the pod's, a
  ``hostPath`` the path itself; an argument or an environment value naming a path under a
  ``mountPath`` (whole, or after ``--flag=``) is rewritten to the directory, for the
  container's command and for ``kubectl exec``'d commands alike (:class:`VolumeMap`); other
  volume types (secret, configMap, projected) are not mounted;
- a ``kubectl exec``'d command is a new process with the container's environment, working
  directory and volume map, in a session of its own that the container's signals and end
  reach too; it alone gets ``KUBE_EMULATOR_CONTAINER_PID`` (:data:`CONTAINER_PID_ENV`), the
  pid of the container's main process, which is PID 1 in a real container.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Obj = dict[str, Any]
POD_IP = "127.0.0.1"
DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"  # Kubernetes' default
MAX_MESSAGE_BYTES = 4096  # kubelet's limit on a termination message
FALLBACK_LOG_LINES = 80  # kubelet's FallbackToLogsOnError takes the last 80 lines
_STRIPPED_ENV = ("KUBECONFIG",)
# Set for exec'd processes only: the container's main process, PID 1 in a real container.
CONTAINER_PID_ENV = "KUBE_EMULATOR_CONTAINER_PID"


@dataclass(frozen=True)
class RuntimeSettings:
    """What the product that composes a cluster tells the runtime about its containers.

    The emulator knows nothing of the programs it runs, so the product says which variable
    carries the path of the per-pod termination-message file (a real runtime bind-mounts
    ``terminationMessagePath``; a local process cannot have its own ``/dev/termination-log``)
    and which variable prefixes of the cluster's own shell must not leak into a pod.
    """

    termination_log_env: str | None = None
    stripped_env_prefixes: tuple[str, ...] = ()


DEFAULT_SETTINGS = RuntimeSettings()


class ContainerConfigError(ValueError):
    """The container spec asks for something the local runtime cannot do."""


def container_argv(container: Obj) -> list[str]:
    """``command`` + ``args`` (Kubernetes semantics: the image's entrypoint does not exist
    here, so a container without ``command`` is an error naming the container)."""
    command = list(container.get("command") or ())
    args = list(container.get("args") or ())
    if not command:
        raise ContainerConfigError(
            f"container {container.get('name')!r} has no command: the local cluster ignores "
            "images, so set spec.containers[].command (e.g. [python, -m, launcher])")
    argv = [str(a) for a in command + args]
    if argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    return argv


def _field_ref(pod: Obj, path: str, container: str) -> str:
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, \
        pod.get("status") or {}
    values = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": status.get("podIP") or POD_IP,
        "status.hostIP": status.get("hostIP") or POD_IP,
    }
    if path in values:
        return str(values[path] or "")
    for prefix, source in (("metadata.labels", meta.get("labels")),
                           ("metadata.annotations", meta.get("annotations"))):
        if path.startswith(prefix + "['") and path.endswith("']"):
            return str((source or {}).get(path[len(prefix) + 2:-2], ""))
    raise ContainerConfigError(
        f"container {container!r}: env valueFrom.fieldRef.fieldPath {path!r} is not "
        f"supported by the local cluster (supported: {', '.join(sorted(values))}, "
        "metadata.labels['KEY'], metadata.annotations['KEY'])")


def container_env(pod: Obj, container: Obj, termination_file: Path,
                  base: Mapping[str, str] | None = None,
                  settings: RuntimeSettings = DEFAULT_SETTINGS) -> dict[str, str]:
    """The process environment: ``base`` (default: this process's) without KUBECONFIG and
    the settings' stripped prefixes, then the container's ``env`` in order (``$(VAR)``
    references expanded as the kubelet does), then HOSTNAME and the settings'
    ``termination_log_env`` pointing at ``termination_file``.
    """
    source = os.environ if base is None else base
    prefixes = settings.stripped_env_prefixes
    env = {k: v for k, v in source.items()
           if not (prefixes and k.startswith(prefixes)) and k not in _STRIPPED_ENV}
    name = container.get("name", "")
    declared: dict[str, str] = {}
    for item in container.get("env") or ():
        if "value" in item or "valueFrom" not in item:
            value = _expand(str(item.get("value", "")), declared)
        else:
            ref = (item.get("valueFrom") or {}).get("fieldRef")
            if ref is None:
                raise ContainerConfigError(
                    f"container {name!r}: env {item.get('name')!r} uses "
                    f"{sorted(item['valueFrom'])}; the local cluster resolves only fieldRef "
                    "(use a literal value instead)")
            value = _field_ref(pod, str(ref.get("fieldPath", "")), name)
        declared[str(item["name"])] = value
    env.update(declared)
    env["HOSTNAME"] = str((pod.get("metadata") or {}).get("name", ""))
    if settings.termination_log_env:
        env[settings.termination_log_env] = str(termination_file)
    return env


def _expand(value: str, declared: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion against earlier env entries; ``$$`` escapes."""
    out: list[str] = []
    i = 0
    while i < len(value):
        if value.startswith("$$", i):
            out.append("$")
            i += 2
        elif value.startswith("$(", i) and (end := value.find(")", i)) != -1 \
                and value[i + 2:end] in declared:
            out.append(declared[value[i + 2:end]])
            i = end + 1
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def map_termination_path(container: Obj, termination_file: Path, argv: list[str]) -> list[str]:
    """Arguments naming the container's ``terminationMessagePath`` point at the per-pod file."""
    declared = str(container.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH)
    return [str(termination_file) if a == declared else a for a in argv]


@dataclass(frozen=True)
class VolumeMap:
    """Where a container's ``volumeMounts`` are on this machine: ``mounts`` pairs each
    ``mountPath`` with its directory, longest path first (a nested mount wins)."""

    mounts: tuple[tuple[str, Path], ...] = ()

    def path(self, value: str) -> str:
        """``value`` with a leading mount path replaced by its directory; other values (and
        a path merely sharing a prefix, ``/sharedx`` for ``/shared``) unchanged."""
        for mount, directory in self.mounts:
            if value == mount or value.startswith(mount + "/"):
                return str(directory) + value[len(mount):]
        return value

    def arg(self, value: str) -> str:
        """An argument: a path, or ``--flag=path``."""
        mapped = self.path(value)
        if mapped == value and value.startswith("-") and "=" in value:
            flag, _, rest = value.partition("=")
            mapped = f"{flag}={self.path(rest)}"
        return mapped

    def argv(self, argv: list[str]) -> list[str]:
        return [self.arg(a) for a in argv]

    def env(self, env: Mapping[str, str], container: Obj) -> dict[str, str]:
        """``env`` with the values of the container's declared variables mapped (what the
        cluster's own environment holds is the machine's, not the container's)."""
        declared = {str(item.get("name")) for item in container.get("env") or ()}
        return {k: self.path(v) if k in declared else v for k, v in env.items()}


def container_volumes(pod: Obj, container: Obj, claims_dir: Path, pod_dir: Path) -> VolumeMap:
    """The VolumeMap of ``container`` (directories created); ContainerConfigError for a mount
    naming no volume of the pod."""
    volumes = {str(v.get("name")): v for v in (pod.get("spec") or {}).get("volumes") or ()}
    namespace = str((pod.get("metadata") or {}).get("namespace") or "default")
    mounts: list[tuple[str, Path]] = []
    for mount in container.get("volumeMounts") or ():
        name = str(mount.get("name"))
        volume = volumes.get(name)
        if volume is None:
            raise ContainerConfigError(
                f"container {container.get('name')!r}: volumeMounts[].name {name!r} is not a "
                "volume of the pod (add it to spec.volumes)")
        if "persistentVolumeClaim" in volume:
            directory = claims_dir / namespace / str(volume["persistentVolumeClaim"]
                                                     .get("claimName"))
        elif "emptyDir" in volume:
            directory = pod_dir / "volumes" / name
        elif "hostPath" in volume:
            directory = Path(str(volume["hostPath"].get("path")))
        else:
            continue  # secret, configMap, ...: not mounted locally
        directory = directory / str(mount.get("subPath") or "")
        directory.mkdir(parents=True, exist_ok=True)
        mount_path = str(mount.get("mountPath") or "").rstrip("/")
        if mount_path and Path(mount_path) != directory:
            mounts.append((mount_path, directory))
    mounts.sort(key=lambda m: len(m[0]), reverse=True)
    return VolumeMap(tuple(mounts))


@dataclass(frozen=True)
class Termination:
    """How a container ended, in the terms of a Kubernetes ``terminated`` state."""

    exit_code: int
    signal: int | None
    reason: str
    message: str

    def state(self, started_at: str, finished_at: str) -> Obj:
        """The ``containerStatuses[].state.terminated`` object."""
        out: Obj = {"exitCode": self.exit_code, "reason": self.reason,
                    "startedAt": started_at, "finishedAt": finished_at}
        if self.signal is not None:
            out["signal"] = self.signal
        if self.message:
            out["message"] = self.message
        return out


def termination(returncode: int, termination_file: Path, log_file: Path,
                policy: str = "File") -> Termination:
    """Turn a process exit into a Termination.

    A negative ``returncode`` (killed by signal N) becomes exit code 128+N with ``signal`` N,
    as a container runtime reports it. ``reason`` is Completed for exit 0, else Error (memory
    limits are not enforced locally, so OOMKilled never appears). The message is
    the termination file's content (last 4 KiB); under ``FallbackToLogsOnError`` an empty
    file on a failure falls back to the last 80 log lines.
    """
    sig = -returncode if returncode < 0 else None
    exit_code = 128 + sig if sig is not None else returncode
    reason = "Completed" if exit_code == 0 else "Error"
    message = _read_tail(termination_file)
    if not message.strip() and exit_code != 0 and policy == "FallbackToLogsOnError":
        lines = _read_tail(log_file, 64 * 1024).splitlines()[-FALLBACK_LOG_LINES:]
        message = "\n".join(lines)[-MAX_MESSAGE_BYTES:]
    return Termination(exit_code, sig, reason, message)


def _read_tail(path: Path, limit: int = MAX_MESSAGE_BYTES) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - limit))
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


# Runs as the new process before the real program: asks Linux to SIGKILL it when the cluster
# process dies, gives up if that already happened, then execs the program in place (same
# pid). A wrapper rather than ``preexec_fn``: code run between fork and exec in a process with
# threads (grpc's, aiohttp's) can deadlock, and without ``preexec_fn`` Python may use vfork.
_DIE_WITH_PARENT = """\
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


def die_with_parent(argv: list[str]) -> list[str]:
    """``argv`` wrapped so that the process is SIGKILLed when this process dies (Linux), so a
    crashed or SIGKILLed cluster leaves no orphan pod or operator behind."""
    return [sys.executable, "-I", "-S", "-c", _DIE_WITH_PARENT, str(os.getpid()), *argv]


def die_with_parent_script(program: str, path: Path) -> Path:
    """Write an executable at ``path`` that runs ``program`` (with its arguments) the way
    :func:`die_with_parent` runs a command, for code that only accepts a binary's path (the
    parent-death signal then follows the thread that starts it; keep that thread alive)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = path.with_suffix(".py")
    wrapper.write_text(_DIE_WITH_PARENT)
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" -I -S "{wrapper}" {os.getpid()} '
                    f'"{program}" "$@"\n')
    path.chmod(0o755)
    return path


def check_program(argv: list[str], env: Mapping[str, str], cwd: Path) -> None:
    """Raise FileNotFoundError when argv[0] cannot be executed (what a runtime reports as
    StartError), since behind the wrapper a missing program would only be an exit code."""
    program = argv[0]
    if "/" in program:
        found = os.access(cwd / program, os.X_OK) and not (cwd / program).is_dir()
    else:
        found = shutil.which(program, path=env.get("PATH", os.defpath)) is not None
    if not found:
        raise FileNotFoundError(f'exec: "{argv[0]}": executable file not found in $PATH '
                                "or not executable")


class ContainerProcess:
    """One container's process group.

    Guarantees: after :meth:`start` the process leads its own session and process group, so
    :meth:`signal` reaches every process it spawned; stdout and stderr go to ``log_file``
    (truncated at start); :meth:`wait` returns the Termination once the leader exited;
    :meth:`stop` sends SIGTERM to the group and SIGKILL to what is left after ``grace``.
    """

    def __init__(self, argv: list[str], env: Mapping[str, str], cwd: Path, log_file: Path,
                 termination_file: Path, policy: str = "File",
                 volumes: VolumeMap | None = None) -> None:
        self.argv = argv
        self.env = dict(env)
        self.volumes = volumes or VolumeMap()  # for exec'd commands
        self.cwd = cwd
        self.log_file = log_file
        self.termination_file = termination_file
        self.policy = policy
        self.process: asyncio.subprocess.Process | None = None
        self.execs: list[asyncio.subprocess.Process] = []

    @property
    def pid(self) -> int | None:
        """The process (group) id once started."""
        return self.process.pid if self.process is not None else None

    async def exec(self, command: list[str], stdin: bool) -> asyncio.subprocess.Process:
        """Start ``command`` as ``kubectl exec`` runs it in the container: same environment
        (plus :data:`CONTAINER_PID_ENV`), working directory and volume map, stdout and stderr
        piped (stdin too when ``stdin``). It leads a session of its own (one cannot join
        another session's process group), and :meth:`signal` and the container's end reach
        it as they reach the container's own processes. Raises OSError when the program
        does not exist or the container is not running."""
        if self.process is None or self.process.returncode is not None:
            raise ProcessLookupError("the container is not running")
        argv = self.volumes.argv(command)
        if argv[0] in ("python", "python3"):
            argv[0] = sys.executable
        check_program(argv, self.env, self.cwd)
        env = {**self.env, CONTAINER_PID_ENV: str(self.process.pid)}
        process = await asyncio.create_subprocess_exec(
            *die_with_parent(argv), cwd=self.cwd, env=env,
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True)
        self.execs = [p for p in self.execs if p.returncode is None] + [process]
        return process

    async def start(self) -> None:
        """Spawn the process. Raises OSError (e.g. the program does not exist)."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.termination_file.parent.mkdir(parents=True, exist_ok=True)
        self.termination_file.write_bytes(b"")
        check_program(self.argv, self.env, self.cwd)
        with open(self.log_file, "wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                *die_with_parent(self.argv), cwd=self.cwd, env=self.env,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True)

    def signal(self, sig: int) -> bool:
        """Send ``sig`` to the whole group and to the exec'd processes' groups; False when the
        container's group was gone."""
        for process in self.execs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
        if self.process is None:
            return False
        try:
            os.killpg(self.process.pid, sig)
            return True
        except ProcessLookupError:
            return False

    async def wait(self) -> Termination:
        """Wait for the leader to exit, then SIGKILL stragglers left in its group (a real
        container's processes die with its PID namespace) and report the termination."""
        assert self.process is not None, "start() first"
        returncode = await self.process.wait()
        self.signal(signal.SIGKILL)
        return termination(returncode, self.termination_file, self.log_file, self.policy)

    async def stop(self, grace: float) -> None:
        """SIGTERM the group, SIGKILL it after ``grace`` seconds if the leader still runs."""
        if self.process is None or self.process.returncode is not None:
            self.signal(signal.SIGKILL)
            return
        self.signal(signal.SIGTERM)
        exited = asyncio.ensure_future(self.process.wait())
        await asyncio.wait({exited}, timeout=max(grace, 0))
        if not exited.done():
            self.signal(signal.SIGKILL)
        await exited


def process_table() -> list[tuple[int, int, int]]:
    """(pid, parent pid, process group id) of every live process, from /proc (Linux)."""
    out: list[tuple[int, int, int]] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read().decode(errors="replace")
        except OSError:
            continue
        # Fields after the parenthesised command name: state ppid pgrp ...
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 2 and fields[0] != "Z":
            out.append((int(entry), int(fields[1]), int(fields[2])))
    return out


def container_processes(leaders: set[int]) -> list[int]:
    """Every live process of containers led by ``leaders``: their process groups and all
    their descendants (a launcher may start training processes in sessions of their own)."""
    table = process_table()
    children: dict[int, list[int]] = {}
    for pid, ppid, _ in table:
        children.setdefault(ppid, []).append(pid)
    live = {pid for pid, _, _ in table}
    stack = [pid for pid, _, pgid in table if pgid in leaders] + sorted(leaders & live)
    found: set[int] = set()
    while stack:
        pid = stack.pop()
        if pid not in found:
            found.add(pid)
            stack.extend(children.get(pid, ()))
    return sorted(found)
