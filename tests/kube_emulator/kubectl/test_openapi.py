"""kubectl's uses of /openapi/v2 and /openapi/v3: validation on apply, explain, warnings."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tests.kube_emulator.kubectl.conftest import Kubectl

POD_WITH_TYPO = """\
apiVersion: v1
kind: Pod
metadata: {name: typo}
spec:
  containers: [{name: c, image: x, command: [sleep, "1"], imagePullPolicyy: Never}]
"""
JOB_WITH_TYPO = """\
apiVersion: elastic.dev/v1alpha1
kind: ElasticJob
metadata: {name: typo}
spec:
  minReplicas: 1
  maxReplicas: 2
  replicaz: 2
  template: {spec: {containers: [{name: w, image: x, command: [python, train.py]}]}}
"""


def test_apply_validates_by_default_and_works_without_flags(kubectl: Kubectl) -> None:
    """What failed before ("failed to download openapi"): a plain apply of the example."""
    kubectl("apply", "-f", "examples/elastic-job.yaml", "-n", "default")
    assert kubectl.json("get", "ej", "mlp", "-n", "default")["spec"]["maxReplicas"] >= 1
    again = kubectl("apply", "-f", "examples/elastic-job.yaml", "-n", "default")
    assert "elasticjob.elastic.dev/mlp unchanged" in again.stdout


@pytest.mark.parametrize(("manifest", "field"), [(POD_WITH_TYPO, "spec.containers[0]."
                                                  "imagePullPolicyy"),
                                                 (JOB_WITH_TYPO, "spec.replicaz")])
def test_unknown_fields_fail_strict_and_warn_under_warn(kubectl: Kubectl, manifest: str,
                                                        field: str) -> None:
    refused = kubectl("apply", "-f", "-", stdin=manifest, check=False)
    assert refused.returncode == 1
    assert f'strict decoding error: unknown field "{field}"' in refused.stderr
    warned = kubectl("apply", "--validate=warn", "-f", "-", stdin=manifest)
    assert f'Warning: unknown field "{field}"' in warned.stderr
    kind = "pod" if "Pod" in manifest else "ej"
    stored = kubectl.json("get", kind, "typo")
    assert field.rsplit(".", 1)[-1] not in json.dumps(stored["spec"])  # dropped on decoding
    kubectl("delete", kind, "typo")


def test_explain_custom_and_builtin_kinds(kubectl: Kubectl) -> None:
    spec = kubectl("explain", "ej.spec").stdout
    assert "KIND:       ElasticJob" in spec and "VERSION:    v1alpha1" in spec
    assert "maxReplicas\t<integer> -required-" in spec
    assert "FIELD: conditions <[]Object>" in kubectl("explain", "ej.status.conditions").stdout
    ports = kubectl("explain", "pod.spec.containers.ports").stdout
    assert "FIELD: ports <[]ContainerPort>" in ports
    assert "containerPort\t<integer> -required-" in ports
    meta = kubectl("explain", "ej.metadata.labels").stdout
    assert "map[string]string" in meta


def _get(kubectl: Kubectl, path: str, accept: str) -> tuple[int, bytes]:
    token = kubectl.api.token
    request = urllib.request.Request(kubectl.server.url + path, headers={
        "Accept": accept, "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_openapi_documents_on_the_wire(kubectl: Kubectl) -> None:
    """v2 is JSON or 406 for protobuf-only clients; the v3 index links every group/version
    with a hash that changes when a CRD changes (clients cache by it)."""
    code, body = _get(kubectl, "/openapi/v2", "application/json")
    v2 = json.loads(body)
    assert code == 200 and v2["swagger"] == "2.0"
    assert "dev.elastic.v1alpha1.ElasticJob" in v2["definitions"]
    assert "io.k8s.api.core.v1.Pod" in v2["definitions"]
    code, body = _get(kubectl, "/openapi/v2",
                      "application/com.github.proto-openapi.spec.v2@v1.0+protobuf")
    assert code == 406 and json.loads(body)["reason"] == "NotAcceptable"
    code, body = _get(kubectl, "/openapi/v3", "application/json")
    index = json.loads(body)["paths"]
    assert {"api/v1", "apis/elastic.dev/v1alpha1", "apis/apiextensions.k8s.io/v1"} <= set(index)
    url = index["apis/elastic.dev/v1alpha1"]["serverRelativeURL"]
    code, body = _get(kubectl, url, "application/json")
    doc = json.loads(body)
    schema = doc["components"]["schemas"]["dev.elastic.v1alpha1.ElasticJob"]
    assert schema["x-kubernetes-group-version-kind"] == [
        {"group": "elastic.dev", "version": "v1alpha1", "kind": "ElasticJob"}]
    patch = doc["paths"]["/apis/elastic.dev/v1alpha1/namespaces/{namespace}/elasticjobs/{name}"][
        "patch"]
    assert "fieldValidation" in {p["name"] for p in patch["parameters"]}
    assert _get(kubectl, "/openapi/v3/apis/nope/v1", "application/json")[0] == 404


def _gadget_crd(extra: dict[str, object]) -> dict[str, object]:
    spec = {"type": "object", "properties": {"size": {"type": "integer"}, **extra}}
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "gadgets.example.test"},
            "spec": {"group": "example.test", "scope": "Namespaced",
                     "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
                     "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
                         "openAPIV3Schema": {"type": "object",
                                             "properties": {"spec": spec}}}}]}}


def test_v3_index_follows_crds(kubectl: Kubectl) -> None:
    """A new CRD appears in the index, a schema change changes its hash (clients cache the
    documents by it), and a deleted CRD leaves the index."""
    crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"

    def index() -> dict[str, dict[str, str]]:
        paths: dict[str, dict[str, str]] = json.loads(
            _get(kubectl, "/openapi/v3", "application/json")[1])["paths"]
        return paths

    kubectl.api.create(crds, _gadget_crd({}))
    first = index()["apis/example.test/v1"]["serverRelativeURL"]
    assert "size\t<integer>" in kubectl("explain", "gadget.spec").stdout
    current = kubectl.api.get(f"{crds}/gadgets.example.test")
    current["spec"] = _gadget_crd({"color": {"type": "string"}})["spec"]
    kubectl.api.request("PUT", f"{crds}/gadgets.example.test", current)
    assert index()["apis/example.test/v1"]["serverRelativeURL"] != first
    assert "color" in kubectl("explain", "gadget.spec").stdout
    kubectl.api.delete(f"{crds}/gadgets.example.test")
    kubectl.api.wait_for(lambda: "apis/example.test/v1" not in index())
