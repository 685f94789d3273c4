"""A failover lands on a member where the session's auth token has expired: the session
authenticates again instead of retrying a dead token for ever (real etcd 3.4, 3 members)."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from elastic_operator.job.etcd_auth import EtcdAuthAdmin, job_user, new_password
from launcher import contract
from launcher.etcd_client import EtcdSecurity, is_expired_token
from launcher.etcd_session import EtcdSession, EtcdUnavailableError
from tests.launcher.conftest import wait_for
from tests.security.conftest import ROOT_PASSWORD
from tests.security.etcd_cluster import EtcdCluster, Pki


def test_session_renews_its_token_after_failing_over(pki: Pki, tmp_path: Path) -> None:
    # Simple tokens live --auth-token-ttl seconds on a member that does not see them used.
    etcd = EtcdCluster(3, pki, tmp_path / "etcd", extra_flags=("--auth-token-ttl=1",))
    try:
        etcd.start()
        admin = EtcdAuthAdmin(etcd.endpoints, etcd.security, ROOT_PASSWORD)
        admin.bootstrap()
        password = new_password()
        admin.ensure_job(job_user("t", "tok-1"), "tok-1", password)
        admin.close()
        security = EtcdSecurity(pki.ca, user=job_user("t", "tok-1"), password=password)
        session = EtcdSession(etcd.endpoints, contract.etcd_prefix("tok-1"), 2, name="s",
                              security=security).start(30)
        try:
            session.put_owned(f"{contract.etcd_prefix('tok-1')}nodes/me", b"1")
            time.sleep(2.5)  # the token expires on the members the session does not use
            used = session.client.endpoint_in_use.netloc
            (member,) = [m for m in etcd.members if m.endpoint == used]
            etcd.kill(member)

            def write() -> bool:
                try:
                    session.put(f"{contract.etcd_prefix('tok-1')}after", b"1")
                    return True
                except EtcdUnavailableError:
                    return False

            wait_for(write, 30, "a write through another member")
            wait_for(lambda: session.connected and
                     f"{contract.etcd_prefix('tok-1')}nodes/me" in session.view()[1], 30,
                     "the session reconnected with its owned key")
        finally:
            session.close()
    finally:
        etcd.close()


class _Refusal(grpc.RpcError):
    """An RPC error as grpc raises it: a status code and etcd's details text."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(("code", "details", "renew"), [
    (grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token", True),
    # Every user or role added for another job makes older tokens fail like this, for good.
    (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: revision of auth store is old", True),
    (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: authentication failed, invalid user ID "
                                       "or password", False),
    (grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied", False),
    (grpc.StatusCode.UNAVAILABLE, "connection refused", False),
])
def test_which_refusals_a_new_token_fixes(code: grpc.StatusCode, details: str,
                                          renew: bool) -> None:
    assert is_expired_token(_Refusal(code, details)) is renew
