"""The real-cluster driver (:class:`e2e.kube_driver.KubeDriver`, every action through the
real ``kubectl``) on the local cluster, set up as e2e/README.md sets up a real one: the
operator as the Deployment ``elastic-system/elastic-operator``, a namespace, a ReadWriteMany
claim and the reader Deployment. So the path a platform team runs on its cluster is exercised on
every change; the scenarios that only run on a real cluster are named in e2e/README.md.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from e2e import scenarios
from e2e.kube_driver import READER, KubeDriver, shared_setup
from elastic_operator.local.cluster import ClusterConfig, LocalCluster
from tests.harness import find_kubectl

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(420)]

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "elastic-e2e"
CLAIM = "elastic-e2e-shared"



@pytest.fixture
def kubectl_path() -> str:
    """The real kubectl; skipped without one, except under ``CI=true`` where it fails."""
    binary = find_kubectl()
    if binary is None:
        why = "no kubectl; `bash scripts/setup.sh --test` installs one"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(why)
        pytest.skip(why)
    return binary


@pytest.fixture
async def kube_driver(kubectl_path: str, tmp_path: Path) -> AsyncIterator[KubeDriver]:
    config = ClusterConfig(state_dir=tmp_path / "cluster", nodes=2, gpus_per_node=1,
                           workdir=REPO, operator_deployment=True,
                           operator_args=["--backoff-base", "0.3", "--backoff-cap", "2",
                                          "--resync", "2"])
    async with LocalCluster(config) as cluster:
        driver = KubeDriver(str(cluster.kubeconfig), NAMESPACE, "elastic-e2e:latest", CLAIM,
                            kubectl=kubectl_path)
        await driver.kubectl("create", "namespace", NAMESPACE)
        await driver.kubectl("apply", "-f", "-", stdin=shared_setup(CLAIM))
        await driver.kubectl("rollout", "status", f"deployment/{READER}", "--timeout=60s")
        await driver.kubectl("rollout", "status", "deployment/elastic-operator",
                             "--timeout=60s", namespace="elastic-system")
        try:
            yield driver
        finally:
            await driver.cleanup()


@pytest.mark.parametrize("scenario", scenarios.THROUGH_KUBECTL, ids=lambda s: s.__name__)
async def test_scenario_through_kubectl(kube_driver: KubeDriver,
                                        scenario: Callable[[KubeDriver], Awaitable[None]]
                                        ) -> None:
    await scenario(kube_driver)
