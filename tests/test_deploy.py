"""deploy/: least-privilege RBAC and a hardened operator Deployment (static checks)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
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
    """The operator's default endpoints are exactly the StatefulSet's members, by stable name."""
    from elastic_operator.job.worker_manifests import DEFAULT_RENDEZVOUS_ENDPOINTS

    (sts,) = by_kind("StatefulSet")
    peers = next(d for d in by_kind("Service")
                 if d["metadata"]["name"] == sts["spec"]["serviceName"])
    assert peers["spec"]["clusterIP"] == "None"
    port = next(p["port"] for p in peers["spec"]["ports"] if p["name"] == "client")
    ns, name = sts["metadata"]["namespace"], sts["metadata"]["name"]
    expected = [f"{name}-{i}.{peers['metadata']['name']}.{ns}.svc:{port}"
                for i in range(sts["spec"]["replicas"])]
    assert DEFAULT_RENDEZVOUS_ENDPOINTS.split(",") == expected
    operator = next(d for d in by_kind("Deployment")
                    if d["metadata"]["name"] == "elastic-operator")
    args = operator["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--default-rendezvous-endpoints={DEFAULT_RENDEZVOUS_ENDPOINTS}" in args
    assert sts["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"]


def test_etcd_keeps_quorum_through_the_loss_of_a_node() -> None:
    (sts,) = by_kind("StatefulSet")
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    labels = sts["spec"]["selector"]["matchLabels"]
    (term,) = sts["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == labels
    (pdb,) = by_kind("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == labels
    assert pdb["spec"]["minAvailable"] == sts["spec"]["replicas"] // 2 + 1


def test_etcd_speaks_only_tls_to_clients_and_mutual_tls_to_peers() -> None:
    (sts,) = by_kind("StatefulSet")
    flags = dict(a.partition("=")[::2] for a in
                 sts["spec"]["template"]["spec"]["containers"][0]["command"][1:])
    for flag in ("--listen-client-urls", "--advertise-client-urls", "--listen-peer-urls",
                 "--initial-advertise-peer-urls"):
        assert flags[flag].startswith("https://"), flag
    assert all(u.split("=", 1)[1].startswith("https://")
               for u in flags["--initial-cluster"].split(","))
    assert flags["--peer-client-cert-auth"] == "true"
    for flag in ("--cert-file", "--key-file", "--peer-cert-file", "--peer-key-file",
                 "--peer-trusted-ca-file"):
        assert flags[flag].startswith("/etc/etcd/tls/"), flag


def test_network_policy_admits_only_workers_operator_and_members() -> None:
    (policy,) = by_kind("NetworkPolicy")
    (sts,) = by_kind("StatefulSet")
    assert policy["spec"]["podSelector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]
    rules = {r["ports"][0]["port"]: r["from"] for r in policy["spec"]["ingress"]}
    assert set(rules) == {2379, 2380}
    client = [f.get("podSelector", {}).get("matchLabels") for f in rules[2379]]
    assert {"elastic.dev/role": "worker"} in client
    assert {"app.kubernetes.io/name": "elastic-operator"} in client
    assert [f["podSelector"]["matchLabels"] for f in rules[2380]] == [
        sts["spec"]["selector"]["matchLabels"]]


def test_kustomize_renders_the_secured_etcd() -> None:
    if not shutil.which("kubectl"):
        pytest.skip("kubectl not installed")
    rendered = subprocess.run(["kubectl", "kustomize", str(DEPLOY)], check=True,
                              capture_output=True, text=True, timeout=60).stdout
    kinds = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(rendered) if d}
    assert {("StatefulSet", "elastic-etcd"), ("PodDisruptionBudget", "elastic-etcd"),
            ("NetworkPolicy", "elastic-etcd")} <= kinds


def test_operator_gets_etcds_ca_and_root_password_but_not_etcds_key() -> None:
    operator = next(d for d in by_kind("Deployment")
                    if d["metadata"]["name"] == "elastic-operator")
    pod = operator["spec"]["template"]["spec"]
    secrets = {v["secret"]["secretName"]: v["secret"] for v in pod["volumes"] if "secret" in v}
    assert secrets["elastic-etcd-tls"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    assert secrets["elastic-etcd-root"]["items"] == [{"key": "password", "path": "password"}]
    args = pod["containers"][0]["args"]
    assert "--etcd-ca-file=/etc/elastic/etcd-ca/ca.crt" in args
    assert "--etcd-root-password-file=/etc/elastic/etcd-root/password" in args
