"""Real processes for the reclaim integration tests, next to the shared harness
(``tests/harness.py``: the emulator with our CRDs and ``elastic-operator run`` as a subprocess):
a Jupyter server with real ipykernel kernels (token auth, private temp dirs) and Prometheus
scraping a DCGM-style exporter. Every process is killed by process group when its fixture ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import websocket
import yaml

from tests.harness import OperatorProcess, free_port, poll_until

TOKEN = "jt-" + uuid.uuid4().hex  # the Jupyter token; must never show up anywhere
START_TIMEOUT = 90.0  # generous: 7 helpers share 2 cores
SCRAPE_INTERVAL = "500ms"  # Prometheus's, so a GPU window of ten samples lasts 5s


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what``.

    Connection and decoding errors (Jupyter or Prometheus still starting) mean "not yet"."""
    return poll_until(check, timeout, what, retry_on=(OSError, ValueError, KeyError, IndexError),
                      interval=0.1)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, then SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@pytest.fixture(scope="module")
def operator_args() -> list[str]:
    """Debug logging: the token must not appear even there."""
    return ["--verbose"]


@pytest.fixture
def operator(operator_process: OperatorProcess) -> OperatorProcess:
    return operator_process


# -- Jupyter ------------------------------------------------------------------------------


class Jupyter:
    """A running jupyter_server or Enterprise Gateway (the same kernels REST and websocket
    API) and the few calls the tests make. ``kernel_env`` goes with every kernel start: the
    gateway takes the kernel's user, namespace and GPUs from it."""

    def __init__(self, port: int, token: str, kernel_env: dict[str, str] | None = None,
                 kind: str = "jupyter_server") -> None:
        self.kind = kind
        self.url = f"http://127.0.0.1:{port}"
        self.token = token
        self.kernel_env = dict(kernel_env or {})
        self._sockets: list[websocket.WebSocket] = []

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        import urllib.request

        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            text = resp.read()
        return json.loads(text) if text else None

    def kernels(self) -> dict[str, dict[str, Any]]:
        return {k["id"]: k for k in self._request("GET", "/api/kernels")}

    def start_kernel(self, name: str = "python3", **env: str) -> str:
        body: dict[str, Any] = {"name": name}
        if self.kernel_env or env:
            body["env"] = {**self.kernel_env, **env}
        return str(self._request("POST", "/api/kernels", body)["id"])

    def shutdown(self, kernel_id: str) -> None:
        """Shut a kernel down (cleanup; a kernel already gone is fine)."""
        import urllib.error

        with contextlib.suppress(urllib.error.HTTPError):
            self._request("DELETE", f"/api/kernels/{kernel_id}")

    def connect(self, kernel_id: str) -> websocket.WebSocket:
        """An open websocket to the kernel's channels (counts as a connection), once the
        kernel answered a ``kernel_info_request`` on it, as a notebook frontend waits.

        Waiting matters: on connect the server nudges the kernel with kernel_info requests on
        the shell *and* the control channel, retried until answered, and records the state of
        the last status message of any request as the kernel's ``execution_state``; ipykernel
        answers control requests even during a cell, so a nudge answered after a cell began
        leaves a busy kernel listed as idle (seen on Enterprise Gateway: the "busy" kernel
        was reclaimed)."""
        ws = websocket.create_connection(
            f"ws://127.0.0.1:{self.url.rsplit(':', 1)[1]}/api/kernels/{kernel_id}/channels",
            header=[f"Authorization: token {self.token}"], timeout=60,
        )
        self._sockets.append(ws)
        self._request_on(ws, "kernel_info_request", {}, wait=True)
        return ws

    def execute(self, ws: websocket.WebSocket, code: str, wait: bool = True) -> None:
        """Send an execute_request; with ``wait``, return once the kernel is idle again,
        without, once it is busy with it."""
        self._request_on(ws, "execute_request", {
            "code": code, "silent": False, "store_history": False, "user_expressions": {},
            "allow_stdin": False, "stop_on_error": True}, wait=wait)

    def _request_on(self, ws: websocket.WebSocket, msg_type: str, content: dict[str, Any],
                    wait: bool) -> None:
        msg_id = uuid.uuid4().hex
        ws.send(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": msg_type, "username": "test",
                       "session": uuid.uuid4().hex, "date": "", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell", "content": content,
        }))
        code = content.get("code", msg_type)
        states = []
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg.get("msg_type") == "status":
                states.append(msg["content"]["execution_state"])
                if not wait and "busy" in states:
                    return
                if wait and states[-1] == "idle" and "busy" in states:
                    return
        raise AssertionError(f"kernel never finished {code!r}: states {states}")

    def use(self, kernel_id: str, code: str = "x = 1 + 1", wait: bool = True,
            keep_open: bool = False) -> None:
        """Run ``code`` on a kernel like a notebook would, then disconnect (unless keep_open)."""
        ws = self.connect(kernel_id)
        self.execute(ws, code, wait=wait)
        if not keep_open:
            ws.close()
            self._sockets.remove(ws)

    def close_sockets(self) -> None:
        for ws in self._sockets:
            with contextlib.suppress(Exception):
                ws.close()
        self._sockets.clear()


def private_jupyter_dirs(base: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """Fresh root/runtime/config/data dirs under ``base`` and the environment that makes a
    Jupyter process use only them (no user config or kernelspecs leak in)."""
    dirs = {name: base / name for name in ("root", "runtime", "config", "data")}
    for path in dirs.values():
        path.mkdir()
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]),
           "JUPYTER_CONFIG_DIR": str(dirs["config"]), "JUPYTER_DATA_DIR": str(dirs["data"]),
           "JUPYTER_PATH": str(dirs["data"]), "JUPYTER_PLATFORM_DIRS": "1",
           "IPYTHONDIR": str(base / "ipython")}
    return dirs, env


@pytest.fixture(scope="module")
def jupyter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jupyter]:
    """A jupyter_server on a random port of 127.0.0.1 with token auth and private dirs."""
    base = tmp_path_factory.mktemp("jupyter")
    dirs, env = private_jupyter_dirs(base)
    log = (base / "jupyter.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", "--ServerApp.ip=127.0.0.1",
         "--ServerApp.port=0", "--ServerApp.port_retries=0", f"--IdentityProvider.token={TOKEN}",
         "--ServerApp.open_browser=False", "--ServerApp.allow_root=True",
         f"--ServerApp.root_dir={dirs['root']}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        def port() -> int | None:
            for info in dirs["runtime"].glob("jpserver-*.json"):
                return int(json.loads(info.read_text())["port"])
            assert proc.poll() is None, (base / "jupyter.log").read_text()
            return None

        server = Jupyter(wait_for(port, START_TIMEOUT, "jupyter_server to start"), TOKEN)
        wait_for(lambda: server.kernels() == {}, START_TIMEOUT, "jupyter_server to answer")
        yield server
        server.close_sockets()
    finally:
        stop_group(proc)
        log.close()


# -- Prometheus and a DCGM-style exporter -------------------------------------------------


class Exporter:
    """Serves the two gauges dcgm-exporter exports by default, ``DCGM_FI_DEV_GPU_UTIL``
    (percent) and ``DCGM_FI_PROF_GR_ENGINE_ACTIVE`` (the same reading as a 0-1 ratio);
    ``util[(namespace, pod)]`` sets a pod's utilisation in percent."""

    def __init__(self) -> None:
        self.util: dict[tuple[str, str], float] = {}
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                lines = []
                for metric, scale in (("DCGM_FI_DEV_GPU_UTIL", 1.0),
                                      ("DCGM_FI_PROF_GR_ENGINE_ACTIVE", 0.01)):
                    lines.append(f"# TYPE {metric} gauge")
                    for i, ((ns, pod), value) in enumerate(sorted(exporter.util.items())):
                        lines.append(f'{metric}{{gpu="{i}",UUID="GPU-{i}",pod="{pod}",'
                                     f'namespace="{ns}",container="kernel"}} {value * scale}')
                body = ("\n".join(lines) + "\n").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return None

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Exporter]]:
    """A real Prometheus scraping the exporter every SCRAPE_INTERVAL; yields (url, exporter)."""
    binary = Path("/usr/bin/prometheus")
    if not binary.exists():
        pytest.fail("Prometheus is required: apt-get install prometheus (/usr/bin/prometheus)")
    base = tmp_path_factory.mktemp("prometheus")
    exporter = Exporter()
    config = {"global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL},
              "scrape_configs": [{"job_name": "dcgm", "static_configs": [
                  {"targets": [f"127.0.0.1:{exporter.port}"]}]}]}
    (base / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (base / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [str(binary), f"--config.file={base / 'prometheus.yml'}",
         f"--storage.tsdb.path={base / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=base,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        import urllib.request

        def ready() -> bool:
            assert proc.poll() is None, (base / "prometheus.log").read_text()[-2000:]
            with urllib.request.urlopen(url + "/-/ready", timeout=5) as resp:
                return resp.status == 200

        wait_for(ready, START_TIMEOUT, "Prometheus to be ready")
        yield url, exporter
    finally:
        stop_group(proc)
        log.close()
        exporter.close()
