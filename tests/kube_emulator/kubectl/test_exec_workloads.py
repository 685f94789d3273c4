"""``kubectl exec``, shared volumes, Deployments and evictions on the local cluster, each as
a user types it with the real kubectl (pods are local processes run by the kubelet)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from elastic_operator.local.cluster import ClusterConfig, LocalCluster

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[3]

SETUP = """\
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec: {accessModes: [ReadWriteMany], resources: {requests: {storage: 1Gi}}}
---
apiVersion: v1
kind: Pod
metadata: {name: writer}
spec:
  containers:
    - name: main
      image: busybox
      command: [sh, -c, 'echo started; exec sleep infinity']
      env: [{name: GREETING, value: hello}, {name: OUT, value: /data/out}]
      volumeMounts: [{name: data, mountPath: /data}, {name: scratch, mountPath: /scratch}]
  volumes:
    - {name: data, persistentVolumeClaim: {claimName: data}}
    - {name: scratch, emptyDir: {}}
---
apiVersion: v1
kind: Pod
metadata: {name: reader}
spec:
  containers:
    - {name: main, image: busybox, command: [sleep, infinity],
       volumeMounts: [{name: shared, mountPath: /mnt/shared}]}
  volumes: [{name: shared, persistentVolumeClaim: {claimName: data}}]
"""


@dataclass
class Cli:
    binary: str
    cluster: LocalCluster
    home: Path

    async def __call__(self, *args: str, stdin: str | None = None,
                       check: bool = True) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            self.binary, "--kubeconfig", str(self.cluster.kubeconfig), *args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env={"PATH": os.environ.get("PATH", ""),
                                                 "HOME": str(self.home)})
        out, err = await asyncio.wait_for(
            proc.communicate(stdin.encode() if stdin is not None else None), 60)
        code = proc.returncode or 0
        if check and code:
            pytest.fail(f"kubectl {' '.join(args)} failed ({code}):\n{out.decode()}"
                        f"\n{err.decode()}")
        return code, out.decode(), err.decode()

    async def json(self, *args: str) -> Any:
        return json.loads((await self(*args, "-o", "json"))[1])


@pytest.fixture
async def cli(kubectl_binary: str, tmp_path: Path) -> AsyncIterator[Cli]:
    config = ClusterConfig(state_dir=tmp_path / "cluster", nodes=2, gpus_per_node=1,
                           workdir=ROOT, operator=False, etcd=False)
    async with LocalCluster(config) as cluster:
        kubectl = Cli(kubectl_binary, cluster, tmp_path / "home")
        await kubectl("apply", "-f", "-", stdin=SETUP)
        await kubectl("wait", "pod/writer", "pod/reader", "--for=condition=Ready",
                      "--timeout=60s")
        yield kubectl


async def test_exec_streams_exit_codes_and_stdin(cli: Cli) -> None:
    code, out, err = await cli("exec", "writer", "--", "sh", "-c",
                               'echo "$GREETING"; echo oops >&2; pwd')
    assert (code, out, err) == (0, f"hello\n{ROOT}\n", "oops\n")
    code, out, err = await cli("exec", "writer", "--", "sh", "-c", "exit 3", check=False)
    assert code == 3 and "command terminated with exit code 3" in err
    code, out, _ = await cli("exec", "-i", "writer", "--", "wc", "-c", stdin="12345")
    assert (code, out.strip()) == (0, "5")
    code, _, err = await cli("exec", "writer", "--", "no-such-program", check=False)
    assert code == 1 and 'exec: "no-such-program": executable file not found' in err
    code, _, err = await cli("exec", "writer", "-c", "other", "--", "true", check=False)
    assert code == 1 and "container other is not valid for pod writer" in err
    code, _, err = await cli("exec", "ghost", "--", "true", check=False)
    assert code == 1 and 'pods "ghost" not found' in err


async def test_a_claim_is_one_directory_for_every_pod_that_mounts_it(cli: Cli) -> None:
    await cli("exec", "writer", "--", "mkdir", "-p", "/data/run")
    await cli("exec", "writer", "--", "cp", "/etc/hostname", "/data/run/x")
    _, out, _ = await cli("exec", "reader", "--", "cat", "/mnt/shared/run/x")
    assert out == Path("/etc/hostname").read_text()
    # Declared env values under a mount path are mapped too; the claim lives in the state dir.
    _, out, _ = await cli("exec", "writer", "--", "sh", "-c", 'echo "$OUT"')
    claim = cli.cluster.state_dir / "volumes" / "default" / "data"
    assert out.strip() == f"{claim}/out"
    assert (claim / "run" / "x").is_file()
    # An emptyDir is the pod's own and goes with it.
    await cli("exec", "writer", "--", "touch", "/scratch/tmp")
    scratch = cli.cluster.state_dir / "pods" / "default" / "writer" / "volumes" / "scratch"
    assert (scratch / "tmp").is_file()
    await cli("delete", "pod", "writer", "--wait=true")
    assert not scratch.exists() and (claim / "run" / "x").is_file()
    assert (await cli.json("get", "pvc", "data"))["status"]["phase"] == "Bound"
    _, table, _ = await cli("get", "pvc", "data")
    assert table.splitlines()[1].split()[:6] == ["data", "Bound", "1Gi", "RWX", "<none>",
                                                 "<none>"]


async def test_a_missing_claim_fails_the_container_naming_it(cli: Cli) -> None:
    pod = ("apiVersion: v1\nkind: Pod\nmetadata: {name: lost}\nspec:\n  restartPolicy: Never\n"
           "  containers: [{name: m, image: x, command: [true]}]\n"
           "  volumes: [{name: v, persistentVolumeClaim: {claimName: nope}}]\n")
    await cli("apply", "-f", "-", stdin=pod)
    await cli("wait", "pod/lost", "--for=jsonpath={.status.phase}=Failed", "--timeout=30s")
    state = (await cli.json("get", "pod", "lost"))["status"]["containerStatuses"][0]["state"]
    assert 'persistentvolumeclaim "nope" not found' in state["terminated"]["message"]


async def test_an_exec_started_process_ends_with_its_pod(cli: Cli) -> None:
    exec_proc = await asyncio.create_subprocess_exec(
        cli.binary, "--kubeconfig", str(cli.cluster.kubeconfig), "exec", "writer", "--",
        "sh", "-c", "echo $$; echo $KUBE_EMULATOR_CONTAINER_PID; exec sleep 300",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(cli.home)})
    assert exec_proc.stdout is not None
    pid = int(await asyncio.wait_for(exec_proc.stdout.readline(), 30))
    main = int(await asyncio.wait_for(exec_proc.stdout.readline(), 30))
    assert cli.cluster.kubelet is not None
    assert {pid, main} <= set(cli.cluster.kubelet.pids("writer"))
    await cli("delete", "pod", "writer", "--grace-period=0", "--force")
    await asyncio.wait_for(exec_proc.wait(), 30)
    for gone in (pid, main):
        with pytest.raises(ProcessLookupError):
            for _ in range(100):  # reaped within a moment of the kill
                os.kill(gone, 0)
                await asyncio.sleep(0.05)


async def test_rollout_status_follows_a_deployment_whose_pod_is_deleted(cli: Cli) -> None:
    await cli("create", "deployment", "web", "--image=x", "--replicas=2", "--",
              "sleep", "infinity")
    _, out, _ = await cli("rollout", "status", "deployment/web", "--timeout=60s")
    assert out.strip() == 'deployment "web" successfully rolled out'
    pods = (await cli.json("get", "pods", "-l", "app=web"))["items"]
    assert len(pods) == 2
    assert all(p["metadata"]["ownerReferences"][0]["kind"] == "Deployment" for p in pods)
    victim = pods[0]["metadata"]["name"]
    await cli("delete", "pod", victim, "--grace-period=0", "--force")
    await cli("rollout", "status", "deployment/web", "--timeout=60s")
    status = (await cli.json("get", "deployment", "web"))["status"]
    assert {k: status[k] for k in ("replicas", "updatedReplicas", "availableReplicas")} == {
        "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}
    names = {p["metadata"]["name"] for p in
             (await cli.json("get", "pods", "-l", "app=web"))["items"]}
    assert victim not in names and len(names) == 2
    _, table, _ = await cli("get", "deployment", "web", "-o", "wide")
    header, row = table.splitlines()
    assert header.split()[:5] == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert row.split()[:4] == ["web", "2/2", "2", "2"]
    assert row.split()[5:] == ["x", "x", "app=web"]  # container named after the image
    await cli("scale", "deployment/web", "--replicas=1")
    await cli("rollout", "status", "deployment/web", "--timeout=60s")
    live = [p for p in (await cli.json("get", "pods", "-l", "app=web"))["items"]
            if not p["metadata"].get("deletionTimestamp")]
    assert len(live) == 1
    await cli("delete", "deployment", "web", "--wait=true")
    await cli("wait", "pods", "-l", "app=web", "--for=delete", "--timeout=30s")


async def test_eviction_deletes_the_pod_gracefully_with_a_disruption_condition(
        cli: Cli) -> None:
    assert cli.cluster.kubelet is not None
    main = cli.cluster.kubelet.pids("reader")[0]
    body = json.dumps({"apiVersion": "policy/v1", "kind": "Eviction",
                       "metadata": {"name": "reader"}, "deleteOptions": {"gracePeriodSeconds": 5}})
    _, out, _ = await cli("create", "--raw", "/api/v1/namespaces/default/pods/reader/eviction",
                          "-f", "-", stdin=body)
    assert json.loads(out)["status"] == "Success"
    await cli("wait", "pod/reader", "--for=delete", "--timeout=30s")
    with pytest.raises(ProcessLookupError):
        os.kill(main, 0)
    code, _, err = await cli("create", "--raw", "/api/v1/namespaces/default/pods/reader/eviction",
                             "-f", "-", stdin=body, check=False)
    assert code == 1 and "NotFound" in err


async def test_deleting_a_node_garbage_collects_its_pods(cli: Cli) -> None:
    node = (await cli.json("get", "pod", "writer"))["spec"]["nodeName"]
    others = [p["metadata"]["name"] for p in (await cli.json("get", "pods"))["items"]
              if p["spec"]["nodeName"] != node]
    assert cli.cluster.kubelet is not None
    main = cli.cluster.kubelet.pids("writer")[0]
    await cli("delete", "node", node)
    await cli("wait", "pod/writer", "--for=delete", "--timeout=30s")
    with pytest.raises(ProcessLookupError):
        for _ in range(100):  # killed with its pod, reaped within a moment
            os.kill(main, 0)
            await asyncio.sleep(0.05)
    left = [p["metadata"]["name"] for p in (await cli.json("get", "pods"))["items"]]
    assert left == others
