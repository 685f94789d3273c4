"""Connecting to etcd: endpoint lists, TLS, etcd v3 users, and what etcd's refusals mean.

``make_client`` returns a python3-etcd3 client that fails over between all endpoints, speaks
TLS when ``EtcdSecurity`` names a CA or client certificate, and holds an auth token when it
names a user. Shared by the launcher (``EtcdSession``) and the operator (round reader, auth
admin), so both take the same endpoint list and the same files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import etcd3
import grpc
from etcd3.client import Endpoint, MultiEndpointEtcd3Client


class EtcdAuthError(PermissionError):
    """etcd refused this client's user, password or permissions; retrying cannot help."""


@dataclass(frozen=True)
class EtcdSecurity:
    """How a client proves itself to etcd: TLS files (PEM paths) and an etcd v3 user.

    Everything empty means plain HTTP without authentication, which only a local cluster or a
    test should use (``describe`` says so, for the logs). ``hint`` names where the credentials
    come from (e.g. the Kubernetes Secret), so an error can say which one to fix.
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    hint: str = ""

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("etcd client TLS needs both a certificate and its key "
                             "(--rdzv-cert-file and --rdzv-key-file; the operator: "
                             "--etcd-cert-file and --etcd-key-file), or neither")
        if bool(self.user) != (self.password is not None):
            raise ValueError("etcd authentication needs both a user and a password "
                             "(--rdzv-user and --rdzv-password-file), or neither")
        for name, path in (("CA", self.ca_file), ("certificate", self.cert_file),
                           ("key", self.key_file)):
            if path and not Path(path).is_file():
                raise ValueError(f"etcd TLS {name} file {path!r} does not exist"
                                 + (f" (from {self.hint})" if self.hint else ""))

    @property
    def tls(self) -> bool:
        return bool(self.ca_file or self.cert_file)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """gRPC TLS credentials from the files (read at each connect: rotated certs apply)."""
        def read(path: str | None) -> bytes | None:
            return Path(path).read_bytes() if path else None
        return grpc.ssl_channel_credentials(
            read(self.ca_file), read(self.key_file), read(self.cert_file))

    def describe(self) -> str:
        """One line for the logs (never the password)."""
        transport = (f"TLS (CA {self.ca_file}{', client certificate' if self.cert_file else ''})"
                     if self.tls else "plain HTTP (no TLS: only for a local cluster or tests)")
        who = f"user {self.user!r}" if self.user else "no authentication"
        return f"{transport}, {who}"


PLAIN: Final = EtcdSecurity()


def security_from_files(*, ca_file: str | None = None, cert_file: str | None = None,
                        key_file: str | None = None, user: str | None = None,
                        password_file: str | None = None, credentials_dir: str | None = None,
                        hint: str = "") -> EtcdSecurity:
    """Settings from files: explicit paths first, then ``credentials_dir`` laid out like a
    credentials Secret (``username``, ``password``, ``ca.crt``, ``tls.crt``, ``tls.key``, each
    used when present). Raises ValueError naming the flag, the file and ``hint`` (the Secret)."""
    mounted = f" (is {hint} mounted?)" if hint else ""
    if credentials_dir:
        where = Path(credentials_dir)
        if not where.is_dir():
            raise ValueError(f"--rdzv-credentials-dir={credentials_dir!r} is not a "
                             f"directory{mounted}")

        def present(name: str) -> str | None:
            return str(where / name) if (where / name).is_file() else None

        ca_file, cert_file = ca_file or present("ca.crt"), cert_file or present("tls.crt")
        key_file = key_file or present("tls.key")
        password_file = password_file or present("password")
        user_file = present("username")
        if not user and user_file:
            user = Path(user_file).read_text().strip()
    password = None
    if password_file:
        try:
            password = Path(password_file).read_text().strip("\r\n")
        except OSError as exc:
            raise ValueError(f"--rdzv-password-file={password_file!r}: cannot read it: "
                             f"{exc.strerror}{mounted}") from exc
        if not password:
            raise ValueError(f"--rdzv-password-file={password_file!r} is empty"
                             + (f"; fix key 'password' of {hint}" if hint else ""))
    return EtcdSecurity(ca_file or None, cert_file or None, key_file or None, user or None,
                        password, hint)


def auth_problem(exc: BaseException) -> str | None:
    """What etcd refused, when ``exc`` is an authentication or permission error, else None.

    etcd 3.4's codes: PERMISSION_DENIED (role lacks the key range), UNAUTHENTICATED (bad or
    expired token), INVALID_ARGUMENT with "authentication failed" (wrong user or password) or
    "user name is empty" (auth is on and the client sent no user).
    """
    if not isinstance(exc, grpc.RpcError) or not hasattr(exc, "code"):
        return None
    code, details = exc.code(), str(exc.details() or "")
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return details or code.name
    if code is grpc.StatusCode.INVALID_ARGUMENT and (
            "authentication failed" in details or "user name is empty" in details):
        return details
    return None


def is_expired_token(exc: BaseException) -> bool:
    """etcd no longer accepts the client's token; authenticating again fixes it.

    Two cases: etcd forgot the token ("invalid auth token"), or the auth store changed since
    it was issued ("revision of auth store is old": every user or role the operator adds for
    another job does that, and the same token then fails for good)."""
    if not isinstance(exc, grpc.RpcError) or not hasattr(exc, "code"):
        return False
    details = str(exc.details() or "")
    return ((exc.code() is grpc.StatusCode.UNAUTHENTICATED and "invalid auth token" in details)
            or (exc.code() is grpc.StatusCode.INVALID_ARGUMENT
                and "revision of auth store is old" in details))


def parse_endpoints(endpoints: str | Sequence[str]) -> list[tuple[str, int]]:
    """Parse ``"host:port,host:port"`` (or a list); an ``http://`` or ``https://`` scheme is
    accepted (whether TLS is used is ``EtcdSecurity``'s to say, not the scheme's)."""
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    parsed: list[tuple[str, int]] = []
    for raw in items:
        item = raw.strip().removeprefix("http://").removeprefix("https://")
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(
                f"etcd endpoint {raw!r} is not HOST:PORT; set --rdzv-endpoint "
                "(or ELASTIC_RDZV_ENDPOINT) to e.g. 'etcd:2379'"
            )
        parsed.append((host or "127.0.0.1", int(port)))
    if not parsed:
        raise ValueError("no etcd endpoint given; set --rdzv-endpoint or ELASTIC_RDZV_ENDPOINT")
    return parsed


def make_client(endpoints: str | Sequence[str], timeout: float,
                security: EtcdSecurity = PLAIN) -> MultiEndpointEtcd3Client:
    """An etcd3 client that fails over between endpoints and never blacklists one for long,
    authenticated when ``security`` names a user.

    Raises EtcdAuthError when etcd refuses the user or password, the ETCD_ERRORS of an
    unreachable etcd otherwise.
    """
    creds = security.channel_credentials() if security.tls else None
    eps = [
        Endpoint(host, port, secure=security.tls, creds=creds, time_retry=0.5)
        for host, port in parse_endpoints(endpoints)
    ]
    client = MultiEndpointEtcd3Client(endpoints=eps, timeout=timeout, failover=True)
    if security.user:
        try:
            authenticate(client, security)
        except BaseException:
            client.close()
            raise
    return client


def authenticate(client: MultiEndpointEtcd3Client, security: EtcdSecurity) -> None:
    """Get a token for ``security.user`` from the first endpoint that answers.

    python3-etcd3 authenticates once, in its constructor, against one random endpoint and with
    no failover; so we ask ourselves, trying each endpoint, and hand the token to the client
    the way its constructor does (``metadata`` and ``call_credentials``).
    """
    from etcd3 import etcdrpc
    from etcd3.client import EtcdTokenCallCredentials

    request = etcdrpc.AuthenticateRequest(name=security.user, password=security.password)
    last: BaseException | None = None
    for _ in range(len(client.endpoints)):
        try:
            response = client.authstub.Authenticate(request, client.timeout)
        except grpc.RpcError as exc:
            problem = auth_problem(exc)
            if problem is not None:
                where = f"; fix {security.hint}" if security.hint else ""
                raise EtcdAuthError(
                    f"etcd refused user {security.user!r}: {problem}{where}") from exc
            last = exc
            client.endpoint_in_use.fail()
            try:
                # Moves to the next endpoint that has not failed and drops the stubs bound
                # to the failed channel.
                _ = client.channel
            except etcd3.exceptions.NoServerAvailableError:
                break
            continue
        # Set before any watch exists (the watcher copies them when it is made).
        client.metadata = (("token", response.token),)
        client.call_credentials = grpc.metadata_call_credentials(
            EtcdTokenCallCredentials(response.token))
        return
    assert last is not None
    raise last
