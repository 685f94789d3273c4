"""The end-to-end scenarios on the embedded local cluster (or a real one, see conftest)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from e2e import scenarios
from e2e.driver import Driver

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(420)]


@pytest.mark.parametrize("scenario", scenarios.ALL, ids=lambda s: s.__name__)
async def test_scenario(driver: Driver, scenario: Callable[[Driver], Awaitable[None]]) -> None:
    await scenario(driver)
