"""The operator on a shared etcd with TLS and auth: a user per job, its Secret, its removal,
the sweep, and forged reports (operator over HTTP against the emulator, real etcd 3.4)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest

from elastic_operator.job.etcd_auth import credentials_secret, job_user, new_password
from elastic_operator.job.worker_manifests import CREDENTIALS_DIR, rdzv_id
from launcher import contract
from launcher.etcd_client import EtcdAuthError, EtcdSecurity, is_expired_token, make_client
from tests.harness import (
    Api,
    Cluster,
    OperatorProcess,
    calls_rbac_denies,
    elastic_job,
    events_for,
    jobs_path,
    operator_calls,
    set_pod_phase,
)
from tests.security.conftest import ROOT_PASSWORD, SecureEtcd

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def operator_args(secure_etcd: SecureEtcd, tmp_path_factory: pytest.TempPathFactory
                  ) -> list[str]:
    root = tmp_path_factory.mktemp("root") / "password"
    root.write_text(ROOT_PASSWORD + "\n")
    assert secure_etcd.cluster.pki is not None
    return ["--resync", "1", "--backoff-base", "0.3", "--backoff-cap", "1",
            "--default-rendezvous-endpoints", secure_etcd.endpoints,
            "--etcd-ca-file", secure_etcd.cluster.pki.ca,
            "--etcd-root-password-file", str(root)]


def job_secret(api: Api, ns: str, name: str) -> Obj:
    """The job's Secret once its etcd user exists (the first worker pod is made after it)."""
    api.wait_for(lambda: _get(api, f"/api/v1/namespaces/{ns}/pods/{name}-worker-0"), 30,
                 "the first worker pod")
    return api.wait_for(lambda: _get(api, f"/api/v1/namespaces/{ns}/secrets/"
                                          f"{credentials_secret(name)}"), 30, "the Secret")


def _get(api: Api, path: str) -> Obj | None:
    try:
        return api.get(path)
    except Exception:
        return None


def credentials(secret: Obj, tmp: Path) -> EtcdSecurity:
    data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    (tmp / "ca.crt").write_bytes(data["ca.crt"])
    return EtcdSecurity(str(tmp / "ca.crt"), user=data["username"].decode(),
                        password=data["password"].decode())


def start_job(api: Api, ns: str, name: str) -> tuple[Obj, str]:
    job = api.create(jobs_path(ns), elastic_job(name, 1, 2))
    return job, rdzv_id(ns, name, job["metadata"]["uid"])


def test_each_job_gets_a_user_reaching_only_its_prefix_and_loses_it_with_the_job(
        api: Api, namespace: str, operator_process: OperatorProcess, secure_etcd: SecureEtcd,
        tmp_path: Path) -> None:
    job, rdzv = start_job(api, namespace, "iso")
    secret = job_secret(api, namespace, "iso")
    (owner,) = secret["metadata"]["ownerReferences"]
    assert owner["uid"] == job["metadata"]["uid"] and owner["controller"]
    pod = api.wait_for(lambda: _get(api, f"/api/v1/namespaces/{namespace}/pods/iso-worker-0"),
                       30, "the worker pod")
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env[contract.PodEnv.RDZV_CREDENTIALS_DIR] == CREDENTIALS_DIR
    assert env[contract.PodEnv.RDZV_SECRET] == f"Secret {namespace}/{credentials_secret('iso')}"
    assert {"secretName": credentials_secret("iso")} in [
        v.get("secret") for v in pod["spec"]["volumes"]]

    creds = credentials(secret, tmp_path)
    client = make_client(secure_etcd.endpoints, 5.0, creds)
    client.put(contract.round_key(rdzv), b"{}")
    with pytest.raises(Exception, match="permission denied"):
        client.get(contract.round_key("someone-else"))
    client.close()

    api.delete(jobs_path(namespace, "iso"))
    api.wait_for(lambda: job_user(namespace, rdzv) not in secure_etcd.admin.users(), 30,
                 "the job's etcd user removed with the job")
    with pytest.raises(EtcdAuthError):
        make_client(secure_etcd.endpoints, 5.0, creds)


def test_users_of_jobs_deleted_while_the_operator_was_down_are_swept(
        api: Api, namespace: str, operator_process: OperatorProcess,
        secure_etcd: SecureEtcd) -> None:
    _, rdzv = start_job(api, namespace, "gone")
    job_secret(api, namespace, "gone")
    user = job_user(namespace, rdzv)
    assert user in secure_etcd.admin.users()
    kept_user = job_user("not-watched-but-live", "x")  # another job, still alive: no
    operator_process.stop()
    try:
        api.delete(jobs_path(namespace, "gone"))
        # Made while the operator is down, for a job that exists: the sweep must keep it.
        _, live = start_job(api, namespace, "stays")
        kept_user = job_user(namespace, live)
        secure_etcd.admin.ensure_job(kept_user, live, new_password())
    finally:
        operator_process.start()
    api.wait_for(lambda: user not in secure_etcd.admin.users(), 30,
                 "the user of the job deleted while the operator was down swept")
    assert kept_user in secure_etcd.admin.users()
    assert "root" in secure_etcd.admin.users()


def test_forged_reports_never_reach_status_or_events_as_given(
        api: Api, namespace: str, operator_process: OperatorProcess, secure_etcd: SecureEtcd,
        tmp_path: Path) -> None:
    _, rdzv = start_job(api, namespace, "forge")
    creds = credentials(job_secret(api, namespace, "forge"), tmp_path)
    # The job's own credentials: the worst a compromised worker of this job can do.
    clients = [make_client(secure_etcd.endpoints, 5.0, creds)]
    now = time.time()

    def put_raw(key: str, value: bytes) -> None:
        # As every etcd client must: a token issued before the auth store changed (the
        # operator adds users for other jobs) is refused for good; authenticate again.
        try:
            clients[0].put(key, value)
        except Exception as exc:
            if not is_expired_token(exc):
                raise
            clients[0] = make_client(secure_etcd.endpoints, 5.0, creds)
            clients[0].put(key, value)

    def put(node: str, report: contract.FailureReport | str) -> None:
        text = report if isinstance(report, str) else report.to_json()
        put_raw(contract.failure_key(rdzv, node), text.encode())

    put("huge", json.dumps({"reason": "ProcessCrashed", "message": "H" * 100_000,
                            "node_id": "forge-worker-0-1-aa", "timestamp": now}))
    put("reason", contract.FailureReport("Pwned", "unknown reason", "forge-worker-0-1-ab",
                                         timestamp=now))
    put("node", contract.FailureReport("ProcessCrashed", "from a stranger", "evil-node-1",
                                       timestamp=now))
    put("future", contract.FailureReport("ProcessCrashed", "pins lastFailure",
                                         "forge-worker-1-1-ac", timestamp=now + 86400 * 365))
    put("types", json.dumps({"reason": "ProcessCrashed", "message": {"x": 1},
                             "node_id": "forge-worker-0-1-ad", "rank": "0", "timestamp": now}))
    put("departure", contract.FailureReport("Shutdown", "not a failure",
                                            "forge-worker-0-1-ae", timestamp=now))
    put_raw(contract.round_key(rdzv), json.dumps(
        {"generation": 7, "members": ["forge-worker-0-1-af"] * 5000}).encode())
    put("good", contract.FailureReport(
        "ProcessHung", "line one\nline two \x1b[31mred\x1b[0m \u202eevil", "forge-worker-1-2-bb",
        rank=1, timestamp=now))
    clients[0].close()

    def reported() -> Obj | None:
        failure = (api.get(jobs_path(namespace, "forge")).get("status") or {}).get(
            "lastFailure")
        return failure if failure and failure.get("reason") == "ProcessHung" else None

    failure = api.wait_for(reported, 30, "the one real report in status")
    assert failure["pod"] == "forge-worker-1" and failure["rank"] == 1
    assert failure["message"] == ("line one\\nline two \\x1b[31mred\\x1b[0m \\u202eevil")
    time.sleep(2.5)  # two more resyncs: nothing else arrives
    status = api.get(jobs_path(namespace, "forge")).get("status") or {}
    assert status["lastFailure"] == failure
    assert status.get("generation") != 7
    messages = " ".join(e["message"] for e in events_for(api, namespace, "forge"))
    for forged in ("HHHH", "unknown reason", "stranger", "pins lastFailure", "not a failure",
                   "\x1b", "\u202e", "\n"):
        assert forged not in messages, forged
    assert "ProcessHung" in messages


def test_refused_credentials_reach_the_status_naming_the_secret(
        api: Api, namespace: str, operator_process: OperatorProcess) -> None:
    """The agent's report (as test_isolation's agent writes it) becomes status.lastFailure."""
    start_job(api, namespace, "badcred")
    job_secret(api, namespace, "badcred")
    secret = f"Secret {namespace}/{credentials_secret('badcred')}"
    report = contract.FailureReport(
        "RendezvousFailed", "etcd credentials refused: etcd refused user 'x': etcdserver: "
        f"authentication failed, invalid user ID or password; fix {secret}", "badcred-worker-0",
        timestamp=time.time())
    set_pod_phase(api, namespace, "badcred-worker-0", "Failed", exit_code=1,
                  message=report.to_json())

    def failure() -> Obj | None:
        status = api.get(jobs_path(namespace, "badcred")).get("status") or {}
        return status.get("lastFailure")

    last = api.wait_for(failure, 30, "the failure in status")
    assert last["reason"] == "RendezvousFailed"
    assert secret in last["message"]


def test_rbac_allows_every_call_the_operator_made_with_auth_on(
        apiserver: Cluster, operator_process: OperatorProcess) -> None:
    """Runs last in the module: the audit holds the Secret calls of every test above."""
    calls = operator_calls(apiserver)
    assert ("create", "", "secrets") in calls
    missing = calls_rbac_denies(calls)
    assert not missing, f"deploy/rbac.yaml does not allow: {missing}"
