"""Which cluster the e2e scenarios run on: the embedded local cluster (default) or, with
``--kubeconfig``, a real one (see e2e/README.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from e2e.driver import Driver


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("e2e")
    group.addoption("--kubeconfig", default=None,
                    help="run the e2e scenarios on this real cluster instead of the local one")
    group.addoption("--e2e-image", default="elastic-operator:latest",
                    help="worker image on a real cluster (contains this repository)")
    group.addoption("--e2e-namespace", default="elastic-e2e")
    group.addoption("--e2e-shared-claim", default="elastic-e2e-shared",
                    help="ReadWriteMany PVC mounted at /shared in workers and the reader pod")


@pytest.fixture
async def driver(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Driver]:
    """A driver for one scenario: a fresh local cluster (1 GPU per node, 2 nodes), or the
    configured real cluster with the scenario's jobs deleted afterwards."""
    kubeconfig = request.config.getoption("--kubeconfig")
    if kubeconfig:
        from e2e.kube_driver import KubeDriver

        kube = KubeDriver(kubeconfig, request.config.getoption("--e2e-namespace"),
                          request.config.getoption("--e2e-image"),
                          request.config.getoption("--e2e-shared-claim"))
        try:
            yield kube
        finally:
            await kube.cleanup()
        return
    from e2e.local_driver import LocalDriver
    from elastic_operator.local.cluster import ClusterConfig, LocalCluster

    root = Path(__file__).resolve().parents[1]
    config = ClusterConfig(state_dir=tmp_path / "cluster", nodes=2, gpus_per_node=1,
                           workdir=root, operator_args=["--backoff-base", "0.3",
                                                        "--backoff-cap", "2", "--resync", "2"])
    async with LocalCluster(config) as cluster:
        yield LocalDriver(cluster)
