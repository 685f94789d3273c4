"""Each job's etcd credentials on the shared etcd: the Secret, the etcd user, their removal.

The I/O half of :mod:`elastic_operator.job.etcd_auth` (which decides names, ranges and what
a sweep removes). Guarantees:

- :meth:`JobCredentials.ensure` returns the name of a Secret in the job's namespace, owned by
  the job (deleted with it by garbage collection), whose ``username``/``password`` etcd
  accepts and whose role reaches only the job's prefix; ``ca.crt`` is the CA of the operator's
  ``--etcd-ca-file`` when etcd speaks TLS. The Secret is written first, so after a crash
  between the two steps the next reconcile sets etcd's password from the Secret.
- :meth:`JobCredentials.remove` deletes a job's user and role; :meth:`JobCredentials.sweep`
  deletes those of every job that no longer exists (deleted while the operator was down), at
  start-up and at each resync.
- The blocking etcd client runs in a thread; the event loop never waits on etcd.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from elastic_operator import k8s, labels
from elastic_operator.api.elasticjob import PLURAL
from elastic_operator.job import worker_manifests
from elastic_operator.job.etcd_auth import (
    SECRET_CA_KEY,
    SECRET_PASSWORD_KEY,
    SECRET_USER_KEY,
    EtcdAuthAdmin,
    credentials_secret,
    job_user,
    new_password,
    stale_users,
)

log = logging.getLogger("elastic_operator.job.etcd_credentials")
Obj = dict[str, Any]


class CredentialsError(RuntimeError):
    """The job's credentials Secret cannot be made or used yet; the message says why."""


def secret_manifest(namespace: str, name: str, uid: str, user: str, password: str,
                    ca_pem: bytes | None) -> Obj:
    """The job's credentials Secret (owned by the job)."""
    data = {SECRET_USER_KEY: user.encode(), SECRET_PASSWORD_KEY: password.encode()}
    if ca_pem:
        data[SECRET_CA_KEY] = ca_pem
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": credentials_secret(name),
            "namespace": namespace,
            "labels": {labels.JOB_NAME: name, labels.ROLE: "rendezvous-credentials"},
            "ownerReferences": [worker_manifests.owner_reference(name, uid)],
        },
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }


class JobCredentials:
    """Per-job etcd users for the jobs on the operator-managed etcd."""

    def __init__(self, api: k8s.Api, admin: EtcdAuthAdmin,
                 namespaces: tuple[str, ...] = ()) -> None:
        self.api = api
        self.admin = admin
        self.namespaces = namespaces
        self._ca_pem = (Path(admin.security.ca_file).read_bytes()
                        if admin.security.ca_file else None)
        self._ready: set[str] = set()  # rdzv ids whose user was checked since start-up
        self._bootstrapped = False

    async def ensure(self, namespace: str, name: str, uid: str) -> str:
        """Secret and etcd user of this job exist and agree; the Secret's name."""
        rdzv = worker_manifests.rdzv_id(namespace, name, uid)
        secret = credentials_secret(name)
        if rdzv in self._ready:
            return secret
        await self._bootstrap()
        user = job_user(namespace, rdzv)
        password = new_password()
        try:
            await self.api.create(k8s.path("secrets", namespace),
                                  secret_manifest(namespace, name, uid, user, password,
                                                  self._ca_pem))
        except k8s.ApiError as exc:
            if exc.code != 409:
                raise
            password = await self._existing_password(namespace, secret, uid, user)
        await asyncio.to_thread(self.admin.ensure_job, user, rdzv, password)
        log.info("%s/%s: etcd user %s reaches only the job's prefix (Secret %s)", namespace,
                 name, user, secret)
        self._ready.add(rdzv)
        return secret

    async def remove(self, namespace: str, name: str, uid: str) -> None:
        """Delete the job's etcd user and role (the Secret goes with the job)."""
        rdzv = worker_manifests.rdzv_id(namespace, name, uid)
        self._ready.discard(rdzv)
        await self._bootstrap()
        await asyncio.to_thread(self.admin.remove, job_user(namespace, rdzv))
        log.info("%s/%s: etcd user and role removed", namespace, name)

    async def sweep(self, known: Iterable[Obj] | None = None) -> list[str]:
        """Remove the users of jobs that no longer exist; the users removed.

        ``known``: the jobs that exist, as the operator's watch-fed cache holds them; None
        (at start-up, before the watch has delivered every job) lists them from the API."""
        await self._bootstrap()
        jobs: list[Obj] = list(known) if known is not None else []
        for ns in (self.namespaces or (None,)) if known is None else ():
            jobs += await self.api.list(k8s.path(PLURAL, ns, group=labels.GROUP,
                                                 version=labels.VERSION))
        live = []
        for job in jobs:
            meta = job.get("metadata") or {}
            ns, name, uid = meta.get("namespace", ""), meta.get("name", ""), meta.get("uid", "")
            live.append((ns, worker_manifests.rdzv_id(ns, name, uid)))
        users = await asyncio.to_thread(self.admin.users)
        stale = stale_users(users, live, self.namespaces)
        for user in stale:
            await asyncio.to_thread(self.admin.remove, user)
            log.info("etcd user %s removed: its job no longer exists", user)
        return stale

    async def close(self) -> None:
        await asyncio.to_thread(self.admin.close)

    async def _bootstrap(self) -> None:
        if not self._bootstrapped:
            await asyncio.to_thread(self.admin.bootstrap)
            self._bootstrapped = True

    async def _existing_password(self, namespace: str, secret: str, uid: str,
                                 user: str) -> str:
        existing = await self.api.get(k8s.path("secrets", namespace, secret))
        meta = existing.get("metadata") or {}
        owners = {ref.get("uid") for ref in meta.get("ownerReferences") or []}
        if uid not in owners:
            raise CredentialsError(
                f"Secret {namespace}/{secret} is not owned by this job (an earlier job of "
                "this name, not yet garbage-collected, or someone else's); delete it or "
                "rename the job")
        data = existing.get("data") or {}
        try:
            if base64.b64decode(data[SECRET_USER_KEY]).decode() != user:
                raise CredentialsError(f"Secret {namespace}/{secret}: key {SECRET_USER_KEY} "
                                       f"is not {user!r}; delete the Secret to re-create it")
            password = base64.b64decode(data[SECRET_PASSWORD_KEY]).decode()
        except (KeyError, ValueError) as exc:
            raise CredentialsError(f"Secret {namespace}/{secret} lacks a readable "
                                   f"{exc}; delete the Secret to re-create it") from exc
        if not password:
            raise CredentialsError(f"Secret {namespace}/{secret}: empty password; delete the "
                                   "Secret to re-create it")
        return password
