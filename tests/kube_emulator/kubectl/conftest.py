"""Fixtures: the real ``kubectl`` binary (``kubectl_binary``, see :func:`tests.harness.
find_kubectl`) against the emulated API server with the project's CRDs, isolated from the
user's kubeconfig and kubectl cache."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from elastic_operator.api import registry
from kube_emulator.apiserver.server import ApiServerThread
from tests.harness import Api

ROOT = Path(__file__).resolve().parents[3]


@dataclass
class Kubectl:
    """Runs kubectl against one emulated server, as the ``admin`` user."""

    binary: str
    server: ApiServerThread
    env: dict[str, str]
    api: Api

    def __call__(self, *args: str, stdin: str | None = None, check: bool = True,
                 timeout: float = 60) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([self.binary, *args], input=stdin, capture_output=True,
                                text=True, env=self.env, cwd=ROOT, timeout=timeout,
                                check=False)
        if check and result.returncode != 0:
            pytest.fail(f"kubectl {' '.join(args)} failed ({result.returncode}):\n"
                        f"{result.stdout}\n{result.stderr}")
        return result

    def popen(self, *args: str) -> subprocess.Popen[str]:
        """A long-running kubectl (``get -w``, ``logs -f``); the caller kills it."""
        return subprocess.Popen([self.binary, *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=self.env, cwd=ROOT)

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "-o", "json").stdout)


LOGS: dict[tuple[str, str], str] = {}


def _log_source(namespace: str, name: str, query: dict[str, str]) -> str:
    return LOGS.get((namespace, name), "")


@pytest.fixture(scope="module")
def kubectl(kubectl_binary: str, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Kubectl]:
    home = tmp_path_factory.mktemp("kubectl-home")
    server = ApiServerThread(pods_graceful=False, log_source=_log_source).start()
    try:
        config = server.write_kubeconfig(home / "kubeconfig", user="admin")
        api = Api(server.url, server.server.add_user("admin"))
        for manifest in registry.all_crds():
            api.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", manifest)
        # HOME isolates kubectl's discovery and OpenAPI cache (~/.kube/cache) from the user's.
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home),
               "KUBECONFIG": str(config)}
        yield Kubectl(kubectl_binary, server, env, api)
    finally:
        server.stop()


