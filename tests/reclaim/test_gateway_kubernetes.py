"""Enterprise Gateway's Kubernetes kernels on the local cluster, reclaimed, the GPU used again.

The whole path as deployed: ``elastic-operator local up`` (API emulator, two nodes with one GPU
each, scheduler, kubelet, etcd and the operator with its reclaim controller) and a real
Enterprise Gateway 3.3 whose KubernetesProcessProxy launches each kernel through the cluster's
API with its own ``launch_kubernetes.py`` and ``kernel-pod.yaml.j2`` (GPUs from
``KERNEL_GPUS``). The kubelet runs the pod's ``launch_ipykernel.py``, the gateway connects to
it, and a reclaim (``action: shutdown``) is the gateway's ``DELETE /api/kernels/{id}``, which
deletes the pod: the GPU goes back to its node and a pod waiting for it is scheduled (and with
``action: deletePod`` the gateway drops the kernel whose pod went, starting no new one). The
reclaimed kernel is one nobody connected to, so ``startingGrace`` counts from the Running
time the kubelet reported.

What stays untested here (see tests/reclaim/gateway.py): the image (the local cluster runs the
template's command, not ``elyra/kernel-py``'s entrypoint), the gateway's in-cluster credentials
(a kubeconfig stands in) and its per-kernel namespaces (the kernels name theirs).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from elastic_operator import kube_client, labels
from tests.harness import ROOT, Api, pods_path
from tests.reclaim.conftest import TOKEN, Jupyter, wait_for
from tests.reclaim.gateway import KUBERNETES_KERNEL, running_gateway
from tests.reclaim.scenario import POLICY, annotations, checks_after, make_policy, status

pytestmark = pytest.mark.slow

NAMESPACE = "notebooks"
WAIT = 90.0  # a kernel pod starts a Python process on 2 loaded cores


def cli(state: Path, *args: str) -> str:
    """``elastic-operator local ...`` against the cluster in ``state``; its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "elastic_operator.cli", "local", *args, "--state-dir", str(state)],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Api]]:
    """The embedded local cluster (operator included); yields its state dir and a client."""
    state = tmp_path_factory.mktemp("cluster")
    cli(state, "up", "--nodes", "2", "--gpus-per-node", "1")
    try:
        config = yaml.safe_load((state / "kubeconfig").read_text())
        api = Api(config["clusters"][0]["cluster"]["server"],
                  config["users"][0]["user"]["token"])
        api.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                          "metadata": {"name": NAMESPACE}})
        yield state, api
    finally:
        cli(state, "down")


@pytest.fixture(scope="module")
def gateway(cluster: tuple[Path, Api],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jupyter]:
    state, _ = cluster
    kernel_env = {"KERNEL_NAMESPACE": NAMESPACE, "KERNEL_GPUS": "1", "KERNEL_GPUS_LIMIT": "1"}
    with running_gateway(tmp_path_factory.mktemp("gateway"), TOKEN,
                         kubeconfig=state / "kubeconfig", kernel_env=kernel_env) as gateway:
        yield gateway


def kernel_pod(api: Api, kernel_id: str) -> dict[str, Any] | None:
    """The pod the gateway made for the kernel (found by its labels), or None."""
    pods = api.list(pods_path(NAMESPACE), label_selector=f"kernel_id={kernel_id}")
    return pods[0] if pods else None


def unschedulable(api: Api, name: str) -> bool:
    """The scheduler found no node with the GPUs the pod asks for."""
    conditions = api.get(pods_path(NAMESPACE, name)).get("status", {}).get("conditions", [])
    return any(c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable"
               for c in conditions)


def test_gateway_kernel_pod_reclaimed_and_its_gpu_used_again(
    cluster: tuple[Path, Api], gateway: Jupyter
) -> None:
    state, api = cluster
    idle = gateway.start_kernel(KUBERNETES_KERNEL)
    exempt = gateway.start_kernel(KUBERNETES_KERNEL)
    pods = {}
    for key, kernel in (("idle", idle), ("exempt", exempt)):
        pod = kernel_pod(api, kernel)
        assert pod is not None, f"the gateway made no pod for the {key} kernel"
        meta, container = pod["metadata"], pod["spec"]["containers"][0]
        assert {"app": "enterprise-gateway", "component": "kernel"}.items() <= (
            meta["labels"].items())
        assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
        assert pod["status"]["phase"] == "Running"
        pods[key] = meta["name"]
    # A user's cell runs in a kernel pod, through the gateway. Nobody ever connects to the
    # other one: started and abandoned, it stays "starting".
    gateway.use(exempt)
    api.patch(pods_path(NAMESPACE, pods["exempt"]),
              {"metadata": {"annotations": {labels.RECLAIM: "never"}}})
    # Both GPUs are held: a training pod that needs one waits.
    api.create(pods_path(NAMESPACE), {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "trainer"},
        "spec": {"containers": [{"name": "t", "image": "x", "command": ["sleep", "600"],
                                 "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}})
    wait_for(lambda: unschedulable(api, "trainer"), WAIT, "the training pod to wait for a GPU")

    started = time.monotonic()
    make_policy(api, NAMESPACE, gateway.url, warningPeriod="2s", startingGrace="3s")
    wait_for(lambda: annotations(api, NAMESPACE, pods["idle"]).get(labels.RECLAIM_AT), WAIT,
             "the idle kernel pod's mark")
    assert gateway.kernels()[idle]["execution_state"] == "starting"
    # The reclaim is the gateway's DELETE: the kernel goes, and the gateway deletes the pod.
    wait_for(lambda: idle not in gateway.kernels(), WAIT, "the gateway to shut the kernel down")
    wait_for(lambda: kernel_pod(api, idle) is None, WAIT, "the gateway to delete the pod")
    wait_for(lambda: api.get(pods_path(NAMESPACE, "trainer"))["status"].get("phase") ==
             "Running", WAIT, "the waiting pod to get the freed GPU")
    print(f"\nreclaim to freed GPU in use: {time.monotonic() - started:.1f}s "
          "(startingGrace 3s, idleAfter 2s, warningPeriod 2s, checkEvery 1s)")

    st = wait_for(lambda: (s := status(api, NAMESPACE)).get("reclaimed") == 1 and s, WAIT,
                  "status.reclaimed")
    assert st["gpusReclaimed"] == 1 and st["gpuHoursReclaimed"] > 0
    (reclaim,) = [d for d in st["recentDecisions"] if d["action"] == "reclaim"]
    assert reclaim["pod"] == pods["idle"] and "never left starting" in reclaim["reason"]
    assert exempt in gateway.kernels() and kernel_pod(api, exempt) is not None
    # kubectl get krp's columns, as the local cluster's get prints them.
    table = cli(state, "get", "krp", "-n", NAMESPACE).splitlines()
    header, row = table[0].split(), table[1].split()
    assert header == ["NAME", "SEEN", "IDLE", "WARNED", "RECLAIMED", "GPUS", "GPU-HOURS",
                      "DRYRUN", "AGE"]
    assert row[0] == POLICY and row[4:6] == ["1", "1"]
    log = (state / "logs" / "operator.log").read_text()
    assert TOKEN not in log

    # The gateway cleans up its own pod on an ordinary shutdown too.
    gateway.shutdown(exempt)
    wait_for(lambda: kernel_pod(api, exempt) is None, WAIT, "the exempt kernel's pod to go")
    api.delete(kube_client.path("pods", NAMESPACE, "trainer"))


def test_gateway_drops_a_kernel_whose_pod_was_deleted(
    cluster: tuple[Path, Api], gateway: Jupyter
) -> None:
    """``action: deletePod`` bypasses the gateway; it notices at its next poll of the pod and
    drops the kernel without starting a new pod (which would take a GPU again)."""
    _, api = cluster
    ns = "notebooks-delete"
    api.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                      "metadata": {"name": ns}})
    kernel = gateway.start_kernel(KUBERNETES_KERNEL, KERNEL_NAMESPACE=ns)
    gateway.use(kernel)
    make_policy(api, ns, gateway.url, action="deletePod", warningPeriod="0s")

    wait_for(lambda: status(api, ns).get("reclaimed") == 1, WAIT, "the pod to be deleted")
    deleted = time.monotonic()
    wait_for(lambda: kernel not in gateway.kernels(), WAIT, "the gateway to drop the kernel")
    print(f"\ngateway dropped the kernel {time.monotonic() - deleted:.1f}s after its pod went")
    checks_after(api, ns, 3)
    assert not api.list(pods_path(ns), label_selector=f"kernel_id={kernel}")
