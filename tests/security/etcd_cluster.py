"""Secured etcd for tests: a throw-away PKI and 1..N local members started from deploy/'s flags.

``make_pki`` writes a CA and one certificate (server and client use, SANs 127.0.0.1, localhost
and the in-cluster names of ``deploy/etcd.yaml``) in the layout of a cert-manager Secret
(``tls.crt``, ``tls.key``, ``ca.crt``), plus a second CA nobody trusts, for the "wrong CA" case.

``EtcdCluster`` takes the etcd command of the StatefulSet as ``kubectl kustomize deploy/``
renders it (or as written in deploy/etcd.yaml where no kubectl is installed) and maps it to
localhost: each in-cluster URL to a member's own 127.0.0.1 port, ``/etc/etcd/tls`` to the PKI,
the data directory to a temporary one, ``$(POD_NAME)`` to the member's name. Every member is
a subprocess in its own process group; ``close()`` kills them all and removes their data.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from launcher.etcd_client import EtcdSecurity, make_client
from launcher.etcd_rendezvous import free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
STS_NAME = "elastic-etcd"
PEERS = "elastic-etcd-peers.elastic-system.svc"


@dataclass(frozen=True)
class Pki:
    dir: Path

    @property
    def ca(self) -> str:
        return str(self.dir / "ca.crt")

    @property
    def cert(self) -> str:
        return str(self.dir / "tls.crt")

    @property
    def key(self) -> str:
        return str(self.dir / "tls.key")

    @property
    def other_ca(self) -> str:
        return str(self.dir / "other-ca.crt")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_pki(directory: Path) -> Pki:
    """A CA and an etcd certificate as cert-manager lays them out (see module docstring)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca("elastic-etcd-test-ca")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    sans = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost"),
            x509.DNSName(f"{STS_NAME}.elastic-system.svc"), x509.DNSName(f"*.{PEERS}")]
    cert = (x509.CertificateBuilder().subject_name(_name("elastic-etcd"))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    (directory / "ca.crt").write_bytes(_pem(ca_cert))
    (directory / "tls.crt").write_bytes(_pem(cert))
    (directory / "tls.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (directory / "tls.key").chmod(0o600)
    (directory / "other-ca.crt").write_bytes(_pem(_ca("nobody-trusts-me")[1]))
    return Pki(directory)


def rendered_etcd_command() -> list[str]:
    """The etcd container's command of the StatefulSet that ``deploy/`` renders."""
    if shutil.which("kubectl"):
        text = subprocess.run(["kubectl", "kustomize", str(DEPLOY)], check=True,
                              capture_output=True, text=True, timeout=60).stdout
    else:
        text = (DEPLOY / "etcd.yaml").read_text()
    for doc in yaml.safe_load_all(text):
        if doc and doc.get("kind") == "StatefulSet" and doc["metadata"]["name"] == STS_NAME:
            (container,) = doc["spec"]["template"]["spec"]["containers"]
            return list(container["command"]) + list(container.get("args") or [])
    raise AssertionError("deploy/ renders no elastic-etcd StatefulSet")


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    metrics_port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class EtcdCluster:
    """``size`` local members from the rendered StatefulSet flags (TLS when ``pki``).

    With ``pki=None`` the https URLs become http and the TLS flags are dropped (a plain etcd
    for tests that need auth without TLS).
    """

    def __init__(self, size: int, pki: Pki | None, workdir: Path | None = None,
                 extra_flags: tuple[str, ...] = ()) -> None:
        self.pki = pki
        self.extra_flags = extra_flags
        self._owns = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="etcd-cluster-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.members = [
            Member(f"{STS_NAME}-{i}", *(free_port("127.0.0.1") for _ in range(3)),
                   self.workdir / f"m{i}", self.workdir / f"m{i}.log")
            for i in range(size)
        ]
        self.template = rendered_etcd_command()

    @property
    def endpoints(self) -> str:
        return ",".join(m.endpoint for m in self.members)

    @property
    def security(self) -> EtcdSecurity:
        return EtcdSecurity(ca_file=self.pki.ca) if self.pki else EtcdSecurity()

    def command(self, member: Member) -> list[str]:
        """The rendered command with in-cluster hosts, ports and paths mapped to this host."""
        scheme = "https" if self.pki else "http"
        out = []
        for arg in self.template:
            arg = arg.replace("$(POD_NAME)", member.name)
            if not self.pki:
                if re.match(r"--(peer-)?(cert|key|trusted-ca)-file=|--peer-client-cert-auth",
                            arg):
                    continue
                arg = arg.replace("https://", "http://")
            flag, _, value = arg.partition("=")
            if flag == "--initial-cluster":
                value = ",".join(f"{m.name}={scheme}://127.0.0.1:{m.peer_port}"
                                 for m in self.members)
            elif flag in ("--listen-client-urls", "--advertise-client-urls"):
                value = f"{scheme}://127.0.0.1:{member.client_port}"
            elif flag in ("--listen-peer-urls", "--initial-advertise-peer-urls"):
                value = f"{scheme}://127.0.0.1:{member.peer_port}"
            elif flag == "--listen-metrics-urls":
                value = f"http://127.0.0.1:{member.metrics_port}"
            elif flag == "--data-dir":
                value = str(member.data_dir)
            elif self.pki and value.startswith("/etc/etcd/tls/"):
                value = str(self.pki.dir / value.rsplit("/", 1)[1])
            out.append(f"{flag}={value}" if value else flag)
        # Leave more room for a loaded 2-core machine than a cluster's defaults would.
        return [shutil.which(out[0]) or out[0], *out[1:],
                "--heartbeat-interval=100", "--election-timeout=1000", "--log-level=warn",
                *self.extra_flags]

    def start(self, timeout: float = 60.0) -> EtcdCluster:
        for member in self.members:
            self.start_member(member)
        self.wait_healthy(timeout)
        return self

    def start_member(self, member: Member) -> None:
        with open(member.log_path, "ab") as log:
            member.process = subprocess.Popen(
                self.command(member), stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Until a v3 request answers through the endpoint list (a quorum is up).

        "Answers" includes etcd refusing an unauthenticated request: that means it serves.
        """
        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            if not any(m.running for m in self.members):
                break
            try:
                client = make_client(self.endpoints, 2.0, self.security)
                try:
                    client.status()
                    return
                finally:
                    client.close()
            except Exception as exc:  # not up yet
                last = exc
                time.sleep(0.2)
        tails = "\n".join(f"--- {m.name}\n{m.log_path.read_text(errors='replace')[-1500:]}"
                          for m in self.members if m.log_path.exists())
        raise RuntimeError(f"etcd cluster not healthy within {timeout}s: {last!r}\n{tails}")

    def leader(self) -> Member:
        """The member that is the raft leader now."""
        for member in self.members:
            if not member.running:
                continue
            with contextlib.suppress(Exception):
                client = make_client(member.endpoint, 2.0, self.security)
                try:
                    status = client.status()
                    if status.leader is not None and status.leader.name == member.name:
                        return member
                finally:
                    client.close()
        raise RuntimeError("no member knows a leader")

    def kill(self, member: Member) -> None:
        """SIGKILL one member (its data stays: ``start_member`` brings it back)."""
        if member.process is not None and member.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(member.process.pid, signal.SIGKILL)
            member.process.wait(10)

    def close(self) -> None:
        for member in self.members:
            self.kill(member)
        if self._owns:
            shutil.rmtree(self.workdir, ignore_errors=True)
