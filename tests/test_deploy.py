"""deploy/: least-privilege RBAC and a hardened operator Deployment (static checks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def docs() -> list[dict[str, Any]]:
    out = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        out += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in docs() if d.get("kind") == kind]


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    manifests = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests


def test_cluster_role_has_no_wildcards() -> None:
    (role,) = by_kind("ClusterRole")
    for rule in role["rules"]:
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[key], f"wildcard in {key} of {rule}"
    (binding,) = by_kind("ClusterRoleBinding")
    (subject,) = binding["subjects"]
    (account,) = by_kind("ServiceAccount")
    assert (subject["name"], subject["namespace"]) == (
        account["metadata"]["name"], account["metadata"]["namespace"])


def test_operator_deployment_is_hardened() -> None:
    deployment = next(d for d in by_kind("Deployment")
                      if d["metadata"]["name"] == "elastic-operator")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "elastic-operator"
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]
    assert any(a.startswith("--liveness=") for a in container["args"])


def test_managed_etcd_matches_the_operator_default() -> None:
    from elastic_operator.workers import DEFAULT_RENDEZVOUS_ENDPOINTS

    service = next(d for d in by_kind("Service") if d["metadata"]["name"] == "elastic-etcd")
    host = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"
    port = service["spec"]["ports"][0]["port"]
    assert f"{host}:{port}" == DEFAULT_RENDEZVOUS_ENDPOINTS
    assert by_kind("StatefulSet")[0]["spec"]["template"]["spec"]["securityContext"][
        "runAsNonRoot"]
