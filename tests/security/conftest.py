"""Fixtures: a throw-away PKI, and a one-member etcd with TLS and auth switched on.

The etcd is started from deploy/'s StatefulSet flags (``EtcdCluster``) and auth is enabled the
way the operator does it (``EtcdAuthAdmin.bootstrap`` with a root password).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from elastic_operator.job.etcd_auth import EtcdAuthAdmin, job_user, new_password
from launcher.etcd_client import EtcdSecurity
from tests.security.etcd_cluster import EtcdCluster, Pki, make_pki

ROOT_PASSWORD = "root-password-for-tests"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@dataclass
class SecureEtcd:
    cluster: EtcdCluster
    admin: EtcdAuthAdmin

    @property
    def endpoints(self) -> str:
        return self.cluster.endpoints

    def job(self, namespace: str, rdzv_id: str) -> EtcdSecurity:
        """Provision a job's user as the operator does; its credentials (CA, user, password)."""
        password = new_password()
        user = job_user(namespace, rdzv_id)
        self.admin.ensure_job(user, rdzv_id, password)
        return EtcdSecurity(self.cluster.pki.ca if self.cluster.pki else None,
                            user=user, password=password)


@pytest.fixture(scope="module")
def secure_etcd(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureEtcd]:
    cluster = EtcdCluster(1, pki, tmp_path_factory.mktemp("etcd"))
    try:
        cluster.start()
        admin = EtcdAuthAdmin(cluster.endpoints, cluster.security, ROOT_PASSWORD)
        admin.bootstrap()
        yield SecureEtcd(cluster, admin)
        admin.close()
    finally:
        cluster.close()


def write_password(directory: Path, password: str) -> Path:
    path = directory / "password"
    path.write_text(password + "\n")
    return path
