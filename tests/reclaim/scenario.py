"""Steps the reclaim integration tests share: kernel pods and policies in the emulated API
server, the policy's status, waiting for checks, and the check that the token leaked nowhere.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from elastic_operator import k8s, labels
from elastic_operator.api.kube import now_rfc3339
from tests.harness import Api, OperatorProcess, events_for, pods_path
from tests.reclaim.conftest import TOKEN, wait_for

WAIT = 60.0
POLICY = "notebooks"


def policy_path(ns: str, name: str | None = None, sub: str | None = None) -> str:
    return k8s.path("kernelreclaimpolicies", ns, name, sub, group=labels.GROUP,
                    version=labels.VERSION)


def make_pod(api: Api, ns: str, kernel_id: str, gpus: int = 1,
             annotations: dict[str, str] | None = None) -> str:
    """A kernel pod as Enterprise Gateway would create it, labelled with the kernel id."""
    name = f"kernel-{kernel_id[:8]}"
    resources = {"limits": {"nvidia.com/gpu": str(gpus)},
                 "requests": {"nvidia.com/gpu": str(gpus)}} if gpus else {}
    api.create(pods_path(ns), {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations or {},
                     "labels": {"app": "enterprise-gateway", "component": "kernel",
                                "kernel_id": kernel_id}},
        "spec": {"containers": [{"name": "kernel", "image": "elyra/kernel-py",
                                 "resources": resources}]},
    })
    return name


def make_policy(api: Api, ns: str, url: str, token: str = TOKEN, **spec: Any) -> None:
    """A KernelReclaimPolicy with the token Secret, short durations unless given."""
    api.create(k8s.path("secrets", ns), {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "jupyter-token"},
        "data": {"token": base64.b64encode(token.encode()).decode()},
    })
    api.create(policy_path(ns), {
        "apiVersion": labels.API_VERSION, "kind": "KernelReclaimPolicy",
        "metadata": {"name": POLICY},
        "spec": {"jupyter": {"url": url, "tokenSecretRef": {"name": "jupyter-token"}},
                 "idleAfter": "2s", "warningPeriod": "3s", "checkEvery": "1s", **spec},
    })


def run_pod(api: Api, ns: str, name: str) -> None:
    """Report the pod Running, its container started now, as a kubelet would."""
    api.patch(pods_path(ns, name, "status"), {"status": {
        "phase": "Running", "startTime": now_rfc3339(),
        "containerStatuses": [{"name": "kernel", "ready": True, "restartCount": 0,
                               "image": "elyra/kernel-py", "imageID": "",
                               "state": {"running": {"startedAt": now_rfc3339()}}}]}})


def status(api: Api, ns: str) -> dict[str, Any]:
    return api.get(policy_path(ns, POLICY)).get("status") or {}


def annotations(api: Api, ns: str, pod: str) -> dict[str, str]:
    return api.get(pods_path(ns, pod))["metadata"].get("annotations") or {}


def checks_after(api: Api, ns: str, count: int) -> None:
    """Wait until the operator has finished ``count`` more checks of the policy."""
    seen: list[str] = []

    def advanced() -> bool:
        stamp = status(api, ns).get("lastCheckTime")
        if stamp and (not seen or seen[-1] != stamp):
            seen.append(stamp)
        return len(seen) > count

    wait_for(advanced, WAIT, f"{count} more checks")


def ready_reason(api: Api, ns: str) -> str | None:
    """The reason of a False Ready condition (a check that decided nothing), else None."""
    conditions = {c["type"]: c for c in status(api, ns).get("conditions", [])}
    ready = conditions.get("Ready", {})
    return ready.get("reason") if ready.get("status") == "False" else None


def reasons(api: Api, ns: str, name: str) -> list[str]:
    return [e["reason"] for e in events_for(api, ns, name)]


def assert_no_token(api: Api, operator: OperatorProcess, ns: str) -> None:
    """The Jupyter token (plain or as the Secret stores it) is in no log line, event or
    status."""
    encoded = base64.b64encode(TOKEN.encode()).decode()
    texts = {"operator log": operator.log(),
             "events": json.dumps(api.list(k8s.path("events", ns))),
             "policy": json.dumps(api.get(policy_path(ns, POLICY)))}
    for what, text in texts.items():
        assert TOKEN not in text and encoded not in text, f"token leaked into the {what}"
