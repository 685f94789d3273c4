"""A real Jupyter Enterprise Gateway 3.3 for the reclaim tests, from ``.venv-gateway``.

``scripts/setup.sh --test`` installs it there, apart from the tests' jupyter_server 2 (the
gateway pins jupyter_server<2 and jupyter_client<7), together with its kernel launchers from
the sdist (``.venv-gateway/kernel-launchers``). Two ways to run kernels:

- local kernels (the gateway's default ``python3`` kernelspec, LocalProcessProxy);
- Kubernetes kernels: the ``python_kubernetes`` kernelspec as the gateway ships it
  (KubernetesProcessProxy, ``launch_kubernetes.py``, ``kernel-pod.yaml.j2``), with one
  addition to the pod template: a ``command``. The local cluster runs a container's command
  as a process and ignores images, so the command is what ``elyra/kernel-py``'s
  ``bootstrap-kernel.sh`` would run: ``launch_ipykernel.py`` with the same arguments.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import ROOT, free_port
from tests.reclaim.conftest import (
    START_TIMEOUT,
    Jupyter,
    private_jupyter_dirs,
    stop_group,
    wait_for,
)

VENV = ROOT / ".venv-gateway"
PYTHON = VENV / "bin" / "python"
LAUNCHERS = VENV / "kernel-launchers"
SHIM = Path(__file__).with_name("gateway_shim.py")
KUBERNETES_KERNEL = "python_kubernetes"
# Every kernel start names a user: the gateway refuses kernels for root by default.
KERNEL_USER = {"KERNEL_USERNAME": "tester"}
_CONTAINER_LINE = "    name: {{ kernel_pod_name | yaml_safe }}\n"  # the container's name


def require_gateway() -> None:
    """Fail (not skip) with the fix when the gateway is not installed."""
    if not PYTHON.exists() or not (LAUNCHERS / "kubernetes").is_dir():
        pytest.fail("Jupyter Enterprise Gateway is required in .venv-gateway: run "
                    "`bash scripts/setup.sh --test`")


def write_kubernetes_kernelspec(data_dir: Path) -> None:
    """The gateway's python_kubernetes kernelspec under ``data_dir/kernels``, its launcher
    running on this machine (see the module docstring for the one change)."""
    scripts = data_dir / "kernels" / KUBERNETES_KERNEL / "scripts"
    scripts.mkdir(parents=True)
    shutil.copy(LAUNCHERS / "kubernetes" / "scripts" / "launch_kubernetes.py", scripts)
    template = (LAUNCHERS / "kubernetes" / "scripts" / "kernel-pod.yaml.j2").read_text()
    assert template.count(_CONTAINER_LINE) == 1, "kernel-pod.yaml.j2 changed shape"
    launch = (f"exec {PYTHON} {LAUNCHERS / 'python' / 'scripts' / 'launch_ipykernel.py'} "
              "--kernel-id $KERNEL_ID --port-range $PORT_RANGE "
              "--response-address $RESPONSE_ADDRESS --public-key $PUBLIC_KEY "
              "--spark-context-initialization-mode none")
    command = f"    command: [sh, -c, {json.dumps(launch)}]\n"
    (scripts / "kernel-pod.yaml.j2").write_text(
        template.replace(_CONTAINER_LINE, _CONTAINER_LINE + command))
    spec = {
        "language": "python",
        "display_name": "Python on Kubernetes",
        "metadata": {"process_proxy": {
            "class_name": "enterprise_gateway.services.processproxies.k8s."
                          "KubernetesProcessProxy",
            "config": {"image_name": "elyra/kernel-py:3.3.0"}}},
        "env": {},
        "argv": [str(PYTHON), str(scripts / "launch_kubernetes.py"),
                 "--RemoteProcessProxy.kernel-id", "{kernel_id}",
                 "--RemoteProcessProxy.port-range", "{port_range}",
                 "--RemoteProcessProxy.response-address", "{response_address}",
                 "--RemoteProcessProxy.public-key", "{public_key}"],
    }
    (scripts.parent / "kernel.json").write_text(json.dumps(spec, indent=1))


@contextlib.contextmanager
def running_gateway(base: Path, token: str, kubeconfig: Path | None = None,
                    kernel_env: dict[str, str] | None = None) -> Iterator[Jupyter]:
    """Enterprise Gateway on a free port of 127.0.0.1 with token auth and kernel listing on
    (the gateway's default is off: GET /api/kernels answers 403). With ``kubeconfig`` it also
    offers the python_kubernetes kernelspec, driving that cluster."""
    require_gateway()
    dirs, env = private_jupyter_dirs(base)
    if kubeconfig is not None:
        write_kubernetes_kernelspec(dirs["data"])
        env |= {"KUBECONFIG": str(kubeconfig), "EG_NAMESPACE": "default"}
    port = free_port()
    log_path = base / "gateway.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [str(PYTHON), str(SHIM), "--EnterpriseGatewayApp.ip=127.0.0.1",
         f"--EnterpriseGatewayApp.port={port}", "--EnterpriseGatewayApp.port_retries=0",
         f"--EnterpriseGatewayApp.auth_token={token}",
         "--EnterpriseGatewayApp.list_kernels=True"],
        env=env, cwd=dirs["root"], stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        gateway = Jupyter(port, token, {**KERNEL_USER, **(kernel_env or {})},
                          kind="enterprise_gateway")

        def answering() -> bool:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            return gateway.kernels() == {}

        wait_for(answering, START_TIMEOUT, "Enterprise Gateway to answer")
        yield gateway
        gateway.close_sockets()
    finally:
        stop_group(proc)
        log.close()
