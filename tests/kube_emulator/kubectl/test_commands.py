"""kubectl's write and wait commands against the emulator, each as a user types it."""

from __future__ import annotations

import base64
import threading
import time

from tests.harness import elastic_job, jobs_path, pods_path
from tests.kube_emulator.kubectl.conftest import LOGS, Kubectl

JOB = """\
apiVersion: elastic.dev/v1alpha1
kind: ElasticJob
metadata: {name: ssa}
spec:
  minReplicas: 1
  maxReplicas: 4
  replicas: 2
  template: {spec: {containers: [{name: w, image: x, command: [python, train.py]}]}}
"""


def test_server_side_apply_owns_fields_and_reports_conflicts(kubectl: Kubectl) -> None:
    assert "serverside-applied" in kubectl("apply", "--server-side", "-f", "-",
                                           stdin=JOB).stdout
    job = kubectl.json("get", "ej", "ssa", "--show-managed-fields")
    managers = {(e["manager"], e["operation"]) for e in job["metadata"]["managedFields"]}
    assert managers == {("kubectl", "Apply")}
    kubectl("scale", "ej", "ssa", "--replicas=3")
    conflict = kubectl("apply", "--server-side", "-f", "-", stdin=JOB, check=False)
    assert conflict.returncode == 1
    assert ('Apply failed with 1 conflict: conflict with "kubectl" with subresource "scale" '
            'using elastic.dev/v1alpha1: .spec.replicas') in conflict.stderr
    kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=JOB)
    assert kubectl.json("get", "ej", "ssa")["spec"]["replicas"] == 2
    # Leaving a field out of the next apply removes it: this applier alone owned it.
    kubectl("apply", "--server-side", "-f", "-", stdin=JOB.replace("  replicas: 2\n", ""))
    assert "replicas" not in kubectl.json("get", "ej", "ssa")["spec"]


def test_secret_string_data_is_stored_as_data(kubectl: Kubectl) -> None:
    secret = ("apiVersion: v1\nkind: Secret\nmetadata: {name: creds}\n"
              "stringData: {password: hunter2}\n")
    kubectl("apply", "-f", "-", stdin=secret)
    stored = kubectl.json("get", "secret", "creds")
    assert "stringData" not in stored
    assert base64.b64decode(stored["data"]["password"]) == b"hunter2"
    assert kubectl("get", "secret", "creds").stdout.split()[4:7] == ["creds", "Opaque", "1"]


def test_scale_patch_edit_and_replace(kubectl: Kubectl) -> None:
    kubectl.api.create(jobs_path("default"), elastic_job("edited", 1, 4, replicas=1))
    kubectl("scale", "ej/edited", "--replicas=3")
    assert kubectl.json("get", "ej", "edited")["spec"]["replicas"] == 3
    kubectl("patch", "ej", "edited", "--type=merge", "-p", '{"spec":{"maxReplicas":5}}')
    assert kubectl.json("get", "ej", "edited")["spec"]["maxReplicas"] == 5
    editor = {**kubectl.env, "KUBE_EDITOR": "sed -i -e s/maxReplicas:\\ 5/maxReplicas:\\ 6/"}
    saved = kubectl.env
    kubectl.env = editor
    try:
        assert "edited" in kubectl("edit", "ej", "edited").stdout
    finally:
        kubectl.env = saved
    assert kubectl.json("get", "ej", "edited")["spec"]["maxReplicas"] == 6
    manifest = kubectl("get", "ej", "edited", "-o", "yaml").stdout
    replaced = kubectl("replace", "-f", "-", stdin=manifest.replace("maxReplicas: 6",
                                                                    "maxReplicas: 7"))
    assert "replaced" in replaced.stdout
    assert kubectl.json("get", "ej", "edited")["spec"]["maxReplicas"] == 7
    invalid = kubectl("patch", "ej", "edited", "--type=merge", "-p",
                      '{"spec":{"minReplicas":9}}', check=False)
    assert invalid.returncode == 1 and "Invalid" in invalid.stderr


def _pod(name: str, **meta: object) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, **meta},
            "spec": {"containers": [{"name": "c", "image": "x", "command": ["sleep", "9"]}]}}


def _later(seconds: float, action: object) -> threading.Thread:
    def run() -> None:
        time.sleep(seconds)
        action()  # type: ignore[operator]
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_wait_for_condition_and_delete_wait(kubectl: Kubectl) -> None:
    kubectl.api.create(pods_path("default"), _pod("slow", finalizers=["example.test/hold"]))
    ready = {"status": {"phase": "Running", "conditions": [
        {"type": "Ready", "status": "True"}]}}
    thread = _later(1.0, lambda: kubectl.api.request(
        "PATCH", pods_path("default", "slow", "status"), ready,
        "application/merge-patch+json"))
    waited = kubectl("wait", "--for=condition=Ready", "pod/slow", "--timeout=30s")
    assert "pod/slow condition met" in waited.stdout
    thread.join()
    release = _later(1.0, lambda: kubectl.api.patch(pods_path("default", "slow"),
                                                    {"metadata": {"finalizers": None}}))
    started = time.monotonic()
    deleted = kubectl("delete", "pod", "slow", "--wait=true", "--timeout=30s")
    assert 'pod "slow" deleted' in deleted.stdout and time.monotonic() - started >= 0.9
    release.join()
    assert kubectl.api.get_or_none(pods_path("default", "slow")) is None


def test_describe_and_logs(kubectl: Kubectl) -> None:
    kubectl.api.create(pods_path("default"), _pod("talker", labels={"app": "talk"}))
    kubectl.api.create("/api/v1/namespaces/default/events", {
        "apiVersion": "v1", "kind": "Event", "metadata": {"name": "talker.1"},
        "involvedObject": {"kind": "Pod", "name": "talker", "namespace": "default",
                           "uid": kubectl.api.get(pods_path("default", "talker"))["metadata"][
                               "uid"]},
        "reason": "Started", "message": "Started container c", "type": "Normal",
        "source": {"component": "kubelet"}, "count": 1})
    described = kubectl("describe", "pod", "talker").stdout
    assert "Name:" in described and "talker" in described and "app=talk" in described
    assert "Started container c" in described
    LOGS[("default", "talker")] = "line one\nline two\n"
    assert kubectl("logs", "talker").stdout == "line one\nline two\n"
    assert kubectl("logs", "-f", "talker", timeout=30).stdout == "line one\nline two\n"


def test_server_side_apply_of_a_builtin_pod_keeps_its_defaults(kubectl: Kubectl) -> None:
    """The applied containers list replaces the stored one (lists are atomic here), and the
    pod's defaults are applied again, so a label change is not a forbidden spec change."""
    pod = ("apiVersion: v1\nkind: Pod\nmetadata: {name: applied, labels: {v: '1'}}\n"
           "spec: {containers: [{name: c, image: x, command: [sleep, '9']}]}\n")
    kubectl("apply", "--server-side", "-f", "-", stdin=pod)
    kubectl("apply", "--server-side", "-f", "-", stdin=pod.replace("v: '1'", "v: '2'"))
    stored = kubectl.json("get", "pod", "applied")
    assert stored["metadata"]["labels"] == {"v": "2"}
    assert stored["spec"]["containers"][0]["terminationMessagePath"] == "/dev/termination-log"
