"""A real etcd (v3 API) as a local subprocess, for tests, benchmarks and the embedded local cluster.

``EtcdServer`` starts Debian's ``/usr/bin/etcd`` (3.4 or later) on 127.0.0.1 with free client and
peer ports and a private data directory, and waits until it answers. ``restart()`` brings it
back on the same port and data directory, so clients that only know the endpoint reconnect and
find their keys and (refreshed) leases again. Standard library plus ``etcd3`` only.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import etcd3

DEFAULT_ETCD_BINARY = "/usr/bin/etcd"


class EtcdStartError(RuntimeError):
    """etcd did not become healthy; the message carries the tail of its log."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EtcdServer:
    """One single-member etcd cluster on 127.0.0.1.

    Guarantees: after ``start()`` returns, a v3 ``get`` on ``endpoint`` succeeds. ``stop()`` and
    ``kill()`` leave the data directory in place (so ``restart()`` keeps every key); ``close()``
    stops the process and removes a data directory this object created. Usable as a context
    manager.
    """

    def __init__(
        self,
        binary: str | None = None,
        data_dir: str | Path | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.binary = binary or shutil.which("etcd") or DEFAULT_ETCD_BINARY
        if not Path(self.binary).exists():
            raise FileNotFoundError(
                f"etcd binary {self.binary!r} not found; install Debian's etcd-server "
                "(apt-get install etcd-server) or pass binary=PATH"
            )
        self._owns_dir = data_dir is None
        self.work_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="etcd-"))
        self.start_timeout = start_timeout
        self.client_port = _free_port()
        self.peer_port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._log_path = self.work_dir / "etcd.log"

    @property
    def endpoint(self) -> str:
        """``host:port`` of the client API, e.g. ``127.0.0.1:23791``."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> EtcdServer:
        """Start etcd and block until it serves v3 requests (or raise EtcdStartError)."""
        if self.running:
            return self
        client_url = f"http://127.0.0.1:{self.client_port}"
        peer_url = f"http://127.0.0.1:{self.peer_port}"
        cmd = [
            self.binary,
            "--name", "default",
            "--data-dir", str(self.work_dir / "data"),
            "--listen-client-urls", client_url,
            "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"default={peer_url}",
            # Short election timings make a single member leader fast after (re)start.
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
            "--log-level", "warn",
        ]
        env = dict(os.environ)
        # Debian's etcd 3.4 refuses to start on some arches without it; harmless elsewhere.
        env.setdefault("ETCD_UNSUPPORTED_ARCH", "")
        with open(self._log_path, "ab") as log:
            self.process = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self._wait_healthy()
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise EtcdStartError(
                    f"etcd exited with code {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                client = etcd3.client(host="127.0.0.1", port=self.client_port, timeout=2)
                try:
                    client.get("/__health")
                    return
                finally:
                    client.close()
            except Exception as exc:  # any connection error means "not yet"
                last_error = exc
            time.sleep(0.05)
        self.kill()
        raise EtcdStartError(
            f"etcd on {self.endpoint} not healthy after {self.start_timeout}s "
            f"(last error: {last_error!r}):\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no etcd log>"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; the data directory stays."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL (a crash); the data directory stays."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> EtcdServer:
        """Stop (if running) and start again on the same ports and data directory."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop and remove the data directory if this object created it."""
        self.kill()
        if self._owns_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> EtcdServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
