"""``elastic-operator local`` as a user runs it: up (daemon), apply, get, logs, delete, down."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from elastic_operator.local.cluster import ClusterState

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

POD_YAML = """\
apiVersion: v1
kind: Pod
metadata:
  name: hello
spec:
  restartPolicy: Never
  containers:
    - name: main
      command: [python, -c, "print('hello from the local cluster')"]
      resources: {limits: {nvidia.com/gpu: 1}}
"""

# A valid ConfigMap followed by an invalid ElasticJob: apply must create neither.
INVALID_YAML = """\
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {a: b}
---
apiVersion: elastic.dev/v1alpha1
kind: ElasticJob
metadata: {name: broken}
spec:
  minReplicas: 0
  maxReplicas: 2
  template: {spec: {containers: [{name: c, command: [python]}]}}
"""


def local(state: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "elastic_operator.cli", "local", *args,
                           "--state-dir", str(state)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False)


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "state"
    result = local(state, "up", "--no-operator", "--nodes", "1", "--gpus-per-node", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    recorded = ClusterState.load(state)
    assert recorded is not None
    try:
        yield state
    finally:
        local(state, "down")
        for pid in (recorded.pid, recorded.etcd_pid):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)  # type: ignore[arg-type]


def test_up_apply_get_logs_delete_down(cluster: Path, tmp_path: Path) -> None:
    state = cluster
    recorded = ClusterState.load(state)
    assert recorded is not None and (state / "kubeconfig").is_file()
    again = local(state, "up")
    assert again.returncode == 1 and "already runs" in again.stderr

    pod_file = tmp_path / "pod.yaml"
    pod_file.write_text(POD_YAML)
    applied = local(state, "apply", "-f", str(pod_file))
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.strip() == "pod/hello created"
    deadline = time.monotonic() + 60
    while True:
        pods = local(state, "get", "pods", "-o", "wide")
        assert pods.returncode == 0, pods.stderr
        if "Completed" in pods.stdout:
            break
        assert time.monotonic() < deadline, pods.stdout
        time.sleep(0.3)
    header, row = pods.stdout.splitlines()
    assert header.split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
    assert row.split()[:4] == ["hello", "0/1", "Completed", "0"]
    assert row.split()[-2:] == ["127.0.0.1", "local-node-0"]
    logs = local(state, "logs", "hello")
    assert logs.stdout == "hello from the local cluster\n"
    followed = local(state, "logs", "-f", "hello", timeout=60)  # returns: the pod has ended
    assert followed.stdout == "hello from the local cluster\n"
    nodes = local(state, "get", "nodes")
    assert nodes.stdout.splitlines()[1].split()[:3] == ["local-node-0", "Ready", "0/1"]
    events = local(state, "get", "events")
    assert "Scheduled" in events.stdout and "Started" in events.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text(INVALID_YAML)
    refused = local(state, "apply", "-f", str(bad))
    assert refused.returncode == 1
    # kubectl's wording: the server's message, not our client's request line.
    assert refused.stderr.startswith("Error from server (Invalid): error when applying")
    assert "HTTP 422" not in refused.stderr and "minReplicas" in refused.stderr
    assert "nothing was created" in refused.stderr
    assert "No resources found" in local(state, "get", "configmaps").stderr
    assert "No resources found" in local(state, "get", "ej").stderr
    bad.write_text(INVALID_YAML.replace("minReplicas: 0", "minReplicas: 1\n  maxReplica: 3"))
    typo = local(state, "apply", "-f", str(bad))
    assert typo.returncode == 1 and "maxReplica" in typo.stderr, typo.stderr
    job = tmp_path / "job.yaml"
    job.write_text(INVALID_YAML.split("---\n")[1].replace("minReplicas: 0", "minReplicas: 1"))
    assert local(state, "apply", "-f", str(job)).stdout.strip() == (
        "elasticjob.elastic.dev/broken created")
    table = local(state, "get", "ej").stdout.splitlines()
    assert table[0].split() == ["NAME", "MIN", "MAX", "DESIRED", "READY", "PHASE", "AGE"]
    assert table[1].split()[:3] == ["broken", "1", "2"]
    unknown = local(state, "get", "widgets")
    assert unknown.returncode == 1 and 'resource type "widgets"' in unknown.stderr

    deleted = local(state, "delete", "pod", "hello")
    assert deleted.stdout.strip() == 'pod "hello" deleted'
    assert local(state, "down").stdout.strip() == "local cluster stopped"
    deadline = time.monotonic() + 30
    while alive(recorded.pid) or alive(recorded.etcd_pid):
        assert time.monotonic() < deadline, "cluster processes survived `local down`"
        time.sleep(0.1)
    assert ClusterState.load(state) is None
    gone = local(state, "get", "pods")
    assert gone.returncode == 1 and "local up" in gone.stderr


def test_a_real_kubectl_against_the_local_cluster(cluster: Path, kubectl_binary: str,
                                                  tmp_path: Path) -> None:
    """What issue 11 reported broken, with the kubeconfig `local up` writes: a plain apply
    (client-side validation wants OpenAPI), explain, and get with printer columns."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path),
           "KUBECONFIG": str(cluster / "kubeconfig")}

    def kubectl(*args: str) -> str:
        result = subprocess.run([kubectl_binary, *args], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    assert "elasticjob.elastic.dev/mlp created" in kubectl("apply", "-f",
                                                           "examples/elastic-job.yaml")
    assert kubectl("get", "ej").split()[:7] == ["NAME", "MIN", "MAX", "DESIRED", "READY",
                                                "PHASE", "AGE"]
    assert "KIND:       ElasticJob" in kubectl("explain", "ej.spec")
    nodes = kubectl("get", "nodes").splitlines()
    assert nodes[0].split() == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    assert nodes[1].split()[:2] == ["local-node-0", "Ready"]
    pod_file = tmp_path / "pod.yaml"
    pod_file.write_text(POD_YAML.replace("name: hello", "name: kubectl-hello"))
    kubectl("apply", "-f", str(pod_file))
    kubectl("wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/kubectl-hello",
            "--timeout=60s")
    assert kubectl("get", "pod", "kubectl-hello").split()[5:9] == [
        "kubectl-hello", "0/1", "Completed", "0"]
    assert kubectl("logs", "kubectl-hello") == "hello from the local cluster\n"
