"""``elastic-operator run --namespace NS`` manages only the jobs in NS."""

from __future__ import annotations

import pytest

from tests.harness import (
    Api,
    OperatorProcess,
    create_namespace,
    elastic_job,
    jobs_path,
    worker_pods,
)

pytestmark = pytest.mark.slow

WATCHED = "watched"


@pytest.fixture(scope="module")
def operator_args(api: Api) -> list[str]:
    # The namespace exists before the operator starts, as it would in a real deployment.
    create_namespace(api, WATCHED)
    return ["--namespace", WATCHED, "--resync", "1"]


def test_only_the_given_namespace_is_managed(
    api: Api, namespace: str, operator_process: OperatorProcess
) -> None:
    api.create(jobs_path(WATCHED), elastic_job("in", 2, 2))
    api.create(jobs_path(namespace), elastic_job("out", 2, 2))
    api.wait_for(lambda: len(worker_pods(api, WATCHED, "in")) == 2, 30, "workers in scope")
    # The same operator has reconciled the watched job; the other one must still be untouched.
    api.wait_for(lambda: (api.get(jobs_path(WATCHED, "in")).get("status") or {})
                 .get("replicas") == 2, 30, "status in scope")
    assert worker_pods(api, namespace, "out") == []
    assert "status" not in api.get(jobs_path(namespace, "out"))
