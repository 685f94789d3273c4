"""The end-to-end scenarios on the embedded local cluster (or a real one, see conftest).

On the local cluster the scenarios of ``scenarios.THROUGH_KUBECTL`` run through the real
kubectl instead (e2e/test_kube_driver.py), so each runs once; with ``--kubeconfig`` every
scenario runs here, on that cluster.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from e2e import scenarios
from e2e.driver import Driver

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(420)]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "scenario" not in metafunc.fixturenames:
        return
    chosen = scenarios.ALL if metafunc.config.getoption("--kubeconfig") else [
        s for s in scenarios.ALL if s not in scenarios.THROUGH_KUBECTL]
    metafunc.parametrize("scenario", chosen, ids=lambda s: s.__name__)


async def test_scenario(driver: Driver, scenario: Callable[[Driver], Awaitable[None]]) -> None:
    await scenario(driver)
