"""The scenarios' driver for a real cluster, through ``kubectl`` (see e2e/README.md).

It needs: the CRDs and the operator installed (``kubectl apply -f crds/ && kubectl apply -k
deploy/``), a namespace for the scenarios, a worker image holding this repository's
``examples/`` under its working directory, a ReadWriteMany PVC (checkpoints and the index
logs that the exactly-once check reads) and a reader Deployment ``e2e-shared-reader`` mounting
it.
A real cluster's GPUs cannot be conjured, so ``can_add_gpus`` is False and the growth
scenario uses the scale subresource instead.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import yaml

from e2e.driver import ApplyRefused, Obj
from elastic_operator.labels import JOB_NAME

SHARED_MOUNT = "/shared"
READER = "e2e-shared-reader"  # a Deployment: its pod comes back when its node is lost
OPERATOR_NAMESPACE = "elastic-system"
OPERATOR_SELECTOR = "app.kubernetes.io/name=elastic-operator"

# The container's main process (the launcher): PID 1 in a container; on the local cluster,
# whose pods share the machine's PID space, the emulator names it in KUBE_EMULATOR_CONTAINER_PID
# (set for exec'd processes only). The helpers below run in an exec'd process and only touch
# that process's descendants, so on the local cluster they never reach another pod.
_LAUNCHER = """
import os, signal
LAUNCHER = int(os.environ.get('KUBE_EMULATOR_CONTAINER_PID', '1'))
def parents():
    out = {}
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            fields = open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()
        except OSError:
            continue
        if fields[0] != 'Z':
            out[int(pid)] = int(fields[1])
    return out
def descendants():
    table, found, stack = parents(), set(), [LAUNCHER]
    while stack:
        pid = stack.pop()
        kids = [p for p, parent in table.items() if parent == pid and p not in found]
        found.update(kids)
        stack.extend(kids)
    return found - {os.getpid()}
"""

# SIGKILL the launcher's children (the training processes), not the launcher itself.
_KILL_TRAINING = _LAUNCHER + """
children = [p for p, parent in parents().items() if parent == LAUNCHER and p != os.getpid()]
for pid in children:
    os.kill(pid, signal.SIGKILL)
print(len(children))
"""

# SIGSTOP the launcher's descendants that hold a training heartbeat file open (the training
# helpers keep it open), i.e. the training processes, not the launcher or idle workers.
_FREEZE_TRAINING = _LAUNCHER + """
n = 0
for pid in descendants():
    try:
        links = [os.readlink(f'/proc/{pid}/fd/{fd}') for fd in os.listdir(f'/proc/{pid}/fd')]
    except OSError:
        continue
    if any(os.path.basename(link).startswith('heartbeat-') for link in links):
        os.kill(pid, signal.SIGSTOP); n += 1
print(n)
"""

# SIGKILL the launcher. Inside a real container's PID namespace its PID 1 ignores SIGKILL
# sent from within (the kernel protects a namespace's init): there this step does nothing
# unless the image runs the launcher under an init (tini) that forwards it.
_KILL_AGENT = _LAUNCHER + """
os.kill(LAUNCHER, signal.SIGKILL)
"""
ETCD_SELECTOR = "app.kubernetes.io/name=elastic-etcd"


class KubeDriver:
    """Drives the cluster of ``kubeconfig`` with kubectl."""

    can_add_gpus = False

    def __init__(self, kubeconfig: str, namespace: str, image: str, claim: str,
                 kubectl: str = "kubectl") -> None:
        self.kubeconfig = kubeconfig
        self.binary = kubectl
        self.namespace = namespace
        self.image = image
        self.claim = claim
        self._jobs: set[str] = set()
        self._cordoned: set[str] = set()

    async def kubectl(self, *args: str, stdin: str | None = None,
                      namespace: str | None = None, check: bool = True) -> str:
        """Run kubectl; returns stdout, raises RuntimeError (with stderr) on failure."""
        proc = await asyncio.create_subprocess_exec(
            self.binary, "--kubeconfig", self.kubeconfig, "-n", namespace or self.namespace,
            *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
        if check and proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {err.decode().strip()}")
        return out.decode()

    def shared_dir(self, job: str) -> str:
        return f"{SHARED_MOUNT}/{self.namespace}/{job}"

    def decorate(self, job: Obj) -> Obj:
        pod = job["spec"]["template"]["spec"]
        pod.setdefault("volumes", []).append(
            {"name": "shared", "persistentVolumeClaim": {"claimName": self.claim}})
        for container in pod["containers"]:
            container["image"] = self.image
            container.setdefault("volumeMounts", []).append(
                {"name": "shared", "mountPath": SHARED_MOUNT})
        return job

    async def apply(self, docs: list[Obj]) -> None:
        for doc in docs:
            if doc.get("kind") == "ElasticJob":
                await self.kubectl("exec", f"deploy/{READER}", "--", "mkdir", "-p",
                                   self.shared_dir(doc["metadata"]["name"]))
        text = yaml.safe_dump_all(docs)
        for extra in (["--dry-run=server"], []):
            try:
                await self.kubectl("apply", *extra, "-f", "-", stdin=text)
            except RuntimeError as exc:
                raise ApplyRefused(str(exc)) from exc
        self._jobs |= {d["metadata"]["name"] for d in docs if d.get("kind") == "ElasticJob"}

    async def _get(self, *args: str) -> Any:
        out = await self.kubectl("get", *args, "-o", "json", "--ignore-not-found")
        return json.loads(out) if out.strip() else None

    async def get_job(self, name: str) -> Obj | None:
        job: Obj | None = await self._get("elasticjob", name)
        return job

    async def list_jobs(self) -> list[Obj]:
        return list((await self._get("elasticjobs") or {}).get("items") or [])

    async def list_pods(self, job: str) -> list[Obj]:
        return list((await self._get("pods", "-l", f"{JOB_NAME}={job}") or {}).get("items")
                    or [])

    async def job_events(self, job: str) -> list[Obj]:
        selector = f"involvedObject.name={job},involvedObject.kind=ElasticJob"
        return list((await self._get("events", "--field-selector", selector) or {})
                    .get("items") or [])

    async def pod_log(self, pod: str) -> str:
        return await self.kubectl("logs", pod, check=False)

    async def read_file(self, path: str) -> str:
        return await self.kubectl("exec", f"deploy/{READER}", "--", "cat", path)

    async def kill_training_processes(self, pod: str) -> int:
        out = await self.kubectl("exec", pod, "--", "python", "-c", _KILL_TRAINING)
        return int(out.strip() or 0)

    async def add_gpus(self, count: int) -> None:
        raise AssertionError(f"cannot add {count} GPUs to a real cluster; scenarios check "
                             "can_add_gpus first")

    async def scale(self, job: str, replicas: int) -> None:
        await self.kubectl("scale", f"elasticjob/{job}", f"--replicas={replicas}")

    async def restart_operator(self) -> None:
        await self.kubectl("delete", "pod", "-l", OPERATOR_SELECTOR, "--grace-period=0",
                           "--force", namespace=OPERATOR_NAMESPACE)
        await self.kubectl("rollout", "status", "deployment/elastic-operator",
                           "--timeout=180s", namespace=OPERATOR_NAMESPACE)

    async def kill_agent(self, pod: str) -> None:
        await self.kubectl("exec", pod, "--", "python", "-c", _KILL_AGENT, check=False)

    async def hang_training(self, pod: str) -> int:
        out = await self.kubectl("exec", pod, "--", "python", "-c", _FREEZE_TRAINING)
        return int(out.strip() or 0)

    async def evict(self, pod: str) -> None:
        # A failed device: the node is cordoned first (what a GPU health check does), so
        # the replacement cannot land on the GPU just given up; cleanup() uncordons it.
        node = (await self.kubectl("get", "pod", pod, "-o", "jsonpath={.spec.nodeName}")).strip()
        await self.kubectl("cordon", node)
        self._cordoned.add(node)
        body = json.dumps({"apiVersion": "policy/v1", "kind": "Eviction",
                           "metadata": {"name": pod, "namespace": self.namespace}})
        await self.kubectl("create", "--raw",
                           f"/api/v1/namespaces/{self.namespace}/pods/{pod}/eviction",
                           "-f", "-", stdin=body)

    async def lose_node(self, pod: str) -> str:
        node = (await self.kubectl("get", "pod", pod, "-o", "jsonpath={.spec.nodeName}")).strip()
        # A real machine cannot be unplugged from here: delete its Node, and the pod GC marks
        # its pods (DisruptionTarget, DeletionByPodGC) and force-deletes them, as after a
        # machine's loss. Deleting the pod ourselves would look like a crash to the operator.
        await self.kubectl("delete", "node", node, "--wait=false")
        await self.kubectl("wait", f"pod/{pod}", "--for=delete", "--timeout=180s", check=False)
        return node

    async def restart_etcd(self) -> None:
        await self.kubectl("delete", "pod", "-l", ETCD_SELECTOR, "--wait=true",
                           namespace=OPERATOR_NAMESPACE)
        await self.kubectl("wait", "pod", "-l", ETCD_SELECTOR, "--for=condition=Ready",
                           "--timeout=180s", namespace=OPERATOR_NAMESPACE)

    async def job_processes(self, job: str) -> list[int]:
        # A container's processes end with it, and the scenarios wait for the pods to be gone
        # first: nothing of the job is left to find from outside the nodes.
        return []

    async def delete_job(self, name: str) -> None:
        await self.kubectl("delete", "elasticjob", name, "--ignore-not-found", "--wait=true")

    async def cleanup(self) -> None:
        """Delete the jobs this driver created (their pods go with them) and uncordon the
        nodes it cordoned."""
        for name in sorted(self._jobs):
            await self.delete_job(name)
        self._jobs.clear()
        for node in sorted(self._cordoned):
            await self.kubectl("uncordon", node, check=False)
        self._cordoned.clear()


def shared_setup(claim: str) -> str:
    """The claim and the reader Deployment the driver needs in its namespace (step 3 of
    e2e/README.md), as YAML for ``kubectl apply``."""
    return f"""\
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: {claim}}}
spec: {{accessModes: [ReadWriteMany], resources: {{requests: {{storage: 1Gi}}}}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {READER}}}
spec:
  selector: {{matchLabels: {{app: {READER}}}}}
  template:
    metadata: {{labels: {{app: {READER}}}}}
    spec:
      containers:
        - {{name: reader, image: busybox, command: [sleep, infinity],
           volumeMounts: [{{name: shared, mountPath: {SHARED_MOUNT}}}]}}
      volumes: [{{name: shared, persistentVolumeClaim: {{claimName: {claim}}}}}]
"""
