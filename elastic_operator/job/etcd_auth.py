"""Per-job isolation on the shared etcd with etcd's own v3 users and roles.

Each job on the operator-managed etcd gets one etcd user and one role of the same name
(:func:`job_user`), the role granted read-write on exactly the job's key prefix
(``launcher.contract.etcd_prefix``) and nothing else, so a member of job B, holding B's
password, is refused (PERMISSION_DENIED) on every read, write, watch or delete under job A's
prefix. The password lives in a Secret owned by the job (:func:`credentials_secret`), deleted
with it by garbage collection; the worker pods mount it.

Two halves, as everywhere in the operator:

- Pure decisions: :func:`job_user`, :func:`prefix_range`, :func:`stale_users` (which users a
  sweep removes: those of jobs that no longer exist, e.g. deleted while the operator was down).
- :class:`EtcdAuthAdmin`: a thin, synchronous wrapper over python3-etcd3's Auth gRPC stub
  (the library has no user/role methods), authenticated as etcd's ``root``. Every call is
  idempotent: "already exists" and "not found" are success, so a repeated reconcile or a
  restarted operator converges. Run it in a thread from async code.

Auth is on only when the operator is given the root password (``--etcd-root-password-file``);
then :meth:`EtcdAuthAdmin.bootstrap` creates ``root`` and enables auth if it is still off, so
a fresh etcd needs no manual step. Without it (the local cluster, tests) jobs share an
unauthenticated etcd and the operator logs that once.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import grpc
from etcd3 import etcdrpc
from etcd3.etcdrpc.auth_pb2 import Permission

from launcher.contract import etcd_prefix
from launcher.etcd_client import EtcdSecurity, make_client

log = logging.getLogger("elastic_operator.job.etcd_auth")

# Users and roles this operator manages all start with this; others are never touched.
USER_PREFIX: Final = "elastic-job/"
ROOT: Final = "root"
# Keys of the per-job credentials Secret (``ca.crt`` only when etcd speaks TLS).
SECRET_USER_KEY: Final = "username"
SECRET_PASSWORD_KEY: Final = "password"
SECRET_CA_KEY: Final = "ca.crt"


def job_user(namespace: str, rdzv_id: str) -> str:
    """Name of the etcd user and role of one job incarnation.

    The namespace is spelled out (it cannot contain ``/``) so a namespaced operator's sweep can
    tell its users from another operator's on the same etcd.
    """
    return f"{USER_PREFIX}{namespace}/{rdzv_id}"


def parse_job_user(user: str) -> tuple[str, str] | None:
    """``(namespace, rdzv_id)`` of a name made by :func:`job_user`, else None."""
    if not user.startswith(USER_PREFIX):
        return None
    namespace, sep, rdzv = user[len(USER_PREFIX):].partition("/")
    return (namespace, rdzv) if sep and namespace and rdzv and "/" not in rdzv else None


def credentials_secret(job: str) -> str:
    """Name of the Secret holding a job's etcd credentials (owned by the job)."""
    return f"{job}-rendezvous"


def prefix_range(prefix: str) -> tuple[bytes, bytes]:
    """``(key, range_end)`` covering every key that starts with ``prefix`` (etcd's convention:
    range_end is the prefix with its last byte incremented)."""
    key = prefix.encode()
    if not key or key[-1] == 0xFF:
        raise ValueError(f"prefix {prefix!r} has no finite range end")
    return key, key[:-1] + bytes([key[-1] + 1])


def new_password() -> str:
    """A fresh random password (256 bits, URL-safe text)."""
    return secrets.token_urlsafe(32)


def stale_users(users: Iterable[str], live: Iterable[tuple[str, str]],
                namespaces: Sequence[str] = ()) -> list[str]:
    """Managed users whose job is gone: not in ``live`` ``(namespace, rdzv_id)`` pairs.

    ``namespaces``: the operator watches only these (empty: all), so users of other
    namespaces are someone else's and never stale to it.
    """
    alive = set(live)
    out = []
    for user in users:
        parsed = parse_job_user(user)
        if parsed is None or (namespaces and parsed[0] not in namespaces):
            continue
        if parsed not in alive:
            out.append(user)
    return sorted(out)


def root_security(security: EtcdSecurity, password: str | None) -> EtcdSecurity:
    """``security``'s TLS files as etcd's root user (no user when ``password`` is None)."""
    s = security
    return EtcdSecurity(s.ca_file, s.cert_file, s.key_file, ROOT if password is not None
                        else None, password, "the operator's --etcd-root-password-file")


class EtcdAdminError(RuntimeError):
    """An auth call etcd refused for a reason other than "exists" / "not found"."""


@dataclass
class EtcdAuthAdmin:
    """etcd's Auth API as root, on ``endpoints`` (comma-separated host:port), over ``security``'s
    TLS; ``root_password`` is the root user's (from the operator's Secret)."""

    endpoints: str
    security: EtcdSecurity
    root_password: str = field(repr=False)  # never in logs or tracebacks
    timeout: float = 5.0

    def __post_init__(self) -> None:
        self._client: Any = None

    # -- setup -----------------------------------------------------------------------------

    def bootstrap(self) -> bool:
        """Make sure auth is on with ``root``; True when this call switched it on.

        Tries root first; when etcd answers "authentication is not enabled", creates root
        (idempotent), grants it the root role and enables auth.
        """
        try:
            self._connect()
            return False
        except grpc.RpcError as exc:
            if exc.code() is not grpc.StatusCode.FAILED_PRECONDITION:
                raise
        plain = make_client(self.endpoints, self.timeout, root_security(self.security, None))
        try:
            stub = plain.authstub
            self._ignore(lambda: stub.UserAdd(etcdrpc.AuthUserAddRequest(
                name=ROOT, password=self.root_password), self.timeout), "already exists")
            self._ignore(lambda: stub.RoleAdd(etcdrpc.AuthRoleAddRequest(name=ROOT),
                                              self.timeout), "already exists")
            stub.UserGrantRole(etcdrpc.AuthUserGrantRoleRequest(user=ROOT, role=ROOT),
                               self.timeout)
            stub.AuthEnable(etcdrpc.AuthEnableRequest(), self.timeout)
        finally:
            plain.close()
        log.info("etcd %s: authentication enabled (user root)", self.endpoints)
        self._connect()
        return True

    # -- per job ---------------------------------------------------------------------------

    def ensure_job(self, user: str, rdzv_id: str, password: str) -> None:
        """User and role ``user`` exist, the role reaches exactly ``rdzv_id``'s prefix, and
        the user's password is ``password`` (set again: the Secret is the source of truth)."""
        key, range_end = prefix_range(etcd_prefix(rdzv_id))
        stub = self._stub()
        self._ignore(lambda: stub.RoleAdd(etcdrpc.AuthRoleAddRequest(name=user), self._t(),
                                          **self._auth()), "already exists")
        permission = Permission(permType=Permission.READWRITE, key=key,
                                        range_end=range_end)
        stub.RoleGrantPermission(etcdrpc.AuthRoleGrantPermissionRequest(
            name=user, perm=permission), self._t(), **self._auth())
        added = self._ignore(lambda: stub.UserAdd(etcdrpc.AuthUserAddRequest(
            name=user, password=password), self._t(), **self._auth()), "already exists")
        if not added:
            stub.UserChangePassword(etcdrpc.AuthUserChangePasswordRequest(
                name=user, password=password), self._t(), **self._auth())
        stub.UserGrantRole(etcdrpc.AuthUserGrantRoleRequest(user=user, role=user), self._t(),
                           **self._auth())

    def remove(self, user: str) -> None:
        """Delete user and role ``user`` (absent ones are fine)."""
        if parse_job_user(user) is None:
            raise ValueError(f"{user!r} is not a job user; refusing to delete it")
        stub = self._stub()
        self._ignore(lambda: stub.UserDelete(etcdrpc.AuthUserDeleteRequest(name=user),
                                             self._t(), **self._auth()), "not found")
        self._ignore(lambda: stub.RoleDelete(etcdrpc.AuthRoleDeleteRequest(role=user),
                                             self._t(), **self._auth()), "not found")

    def users(self) -> list[str]:
        """Every etcd user name."""
        response = self._stub().UserList(etcdrpc.AuthUserListRequest(), self._t(),
                                         **self._auth())
        return list(response.users)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- plumbing --------------------------------------------------------------------------

    def _connect(self) -> None:
        self.close()
        self._client = make_client(self.endpoints, self.timeout,
                                   root_security(self.security, self.root_password))

    def _stub(self) -> Any:
        if self._client is None:
            self._connect()
        return self._client.authstub

    def _t(self) -> float:
        return self.timeout

    def _auth(self) -> dict[str, Any]:
        return {"credentials": self._client.call_credentials,
                "metadata": self._client.metadata}

    def _ignore(self, call: Any, benign: str) -> bool:
        """Run ``call``; False when etcd answered with the benign error ``benign``."""
        try:
            call()
            return True
        except grpc.RpcError as exc:
            if benign in str(exc.details() or ""):
                return False
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                              grpc.StatusCode.UNAUTHENTICATED):
                self.close()  # reconnect (another endpoint, a fresh token) next time
                raise
            raise EtcdAdminError(f"etcd refused an auth call: {exc.details()}") from exc
