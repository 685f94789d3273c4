"""The pure parts of server-side printing: ages, JSONPath cells, pod status, Accept."""

from __future__ import annotations

from typing import Any

import pytest

from kube_emulator.apiserver.printers import human_duration, pod_status
from kube_emulator.apiserver.tables import json_path, table_version


@pytest.mark.parametrize(("seconds", "text"), [
    (-5, "<invalid>"), (-1, "0s"), (0, "0s"), (119, "119s"), (120, "2m"), (200, "3m20s"),
    (600, "10m"), (3 * 3600 + 5, "3h"), (5 * 3600 + 12 * 60, "5h12m"), (30 * 3600, "30h"),
    (3 * 86400 + 4 * 3600, "3d4h"), (40 * 86400, "40d"), (800 * 86400, "2y70d"),
    (9 * 365 * 86400, "9y")])
def test_human_duration(seconds: int, text: str) -> None:
    assert human_duration(seconds) == text


def test_json_path_subset() -> None:
    obj = {"status": {"conditions": [{"type": "Ready", "status": "True"},
                                     {"type": "Other", "status": "False"}]},
           "spec": {"items": [1, 2]}}
    assert json_path(obj, '.status.conditions[?(@.type=="Ready")].status') == ["True"]
    assert json_path(obj, ".spec.items[1]") == [2]
    assert json_path(obj, "{.spec.items[*]}") == [1, 2]
    assert json_path(obj, ".spec.missing") == []


def _container(state: dict[str, Any], ready: bool = False, restarts: int = 0) -> dict[str, Any]:
    return {"name": "c", "ready": ready, "restartCount": restarts, "state": state}


@pytest.mark.parametrize(("status", "expected"), [
    ({"phase": "Pending"}, ("0/1", "Pending", "0")),
    ({"phase": "Running", "containerStatuses": [_container({"running": {}}, True, 2)]},
     ("1/1", "Running", "2")),
    ({"phase": "Pending", "containerStatuses": [
        _container({"waiting": {"reason": "ContainerCreating"}})]},
     ("0/1", "ContainerCreating", "0")),
    ({"phase": "Failed", "containerStatuses": [
        _container({"terminated": {"exitCode": 3, "reason": "Error"}})]},
     ("0/1", "Error", "0")),
    ({"phase": "Failed", "containerStatuses": [
        _container({"terminated": {"exitCode": 137, "signal": 9}})]},
     ("0/1", "Signal:9", "0")),
])
def test_pod_status_column(status: dict[str, Any], expected: tuple[str, str, str]) -> None:
    pod = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}, "status": status}
    assert pod_status(pod) == expected
    pod["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert pod_status(pod)[1] == "Terminating"


def test_table_accept_header() -> None:
    kubectl = ("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;"
               "v=v1beta1;g=meta.k8s.io,application/json")
    assert table_version(kubectl) == "v1"
    assert table_version("application/json;as=Table;v=v1beta1;g=meta.k8s.io") == "v1beta1"
    assert table_version("application/json") is None
