"""What a job costs the API server: requests counted in the emulator's audit log.

The reconciler reads jobs and pods from its watches (``elastic_operator.job.watch_cache``), so the
requests a job causes are its own writes: creating a job of N workers is N pod creates plus a
few (Service, status, events), and a job that trains undisturbed costs nothing at all, however
many periodic resyncs pass (here a dozen, at a 1 s resync; ``bench/operator_scale.py`` counts
60 s at the default 10 s).
"""

from __future__ import annotations

import time

import pytest

from tests.harness import (
    OPERATOR_USER,
    Api,
    Cluster,
    OperatorProcess,
    elastic_job,
    jobs_path,
    set_pod_phase,
    worker_pods,
)

pytestmark = pytest.mark.slow

WORKERS = 6
RESYNC = 1.0  # seconds: many periodic resyncs in a short idle window


@pytest.fixture(scope="module")
def operator_args() -> list[str]:
    return ["--resync", f"{RESYNC:g}"]


def requests_in(cluster: Cluster, namespace: str, since: int) -> list[str]:
    """The operator's requests on objects of ``namespace`` after audit record ``since``."""
    return [f"{r.verb} {r.resource}/{r.subresource} {r.name}"
            for r in cluster.audit(OPERATOR_USER)[since:] if r.namespace == namespace]


def settle(cluster: Cluster, namespace: str, since: int, quiet: float = 2.0) -> list[str]:
    """The requests after ``since``, once none came for ``quiet`` seconds."""
    seen = requests_in(cluster, namespace, since)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = requests_in(cluster, namespace, since)
        if now == seen:
            return now
        seen = now
    raise AssertionError(f"the operator never went quiet: {seen[-10:]}")


def test_creating_a_job_costs_its_pods_plus_five_and_an_idle_job_nothing(
    apiserver: Cluster, api: Api, namespace: str, operator_process: OperatorProcess
) -> None:
    mark = len(apiserver.audit(OPERATOR_USER))
    api.create(jobs_path(namespace), elastic_job("cost", 1, WORKERS, replicas=WORKERS))
    api.wait_for(lambda: len(worker_pods(api, namespace, "cost")) == WORKERS, 30,
                 f"{WORKERS} workers")
    created = settle(apiserver, namespace, mark)
    creates = [r for r in created if r.startswith("create pods/")]
    assert len(creates) == WORKERS, created
    assert len(created) <= WORKERS + 5, created
    # Train: every worker Running and Ready; the job goes Running.
    for pod in worker_pods(api, namespace, "cost"):
        set_pod_phase(api, namespace, pod["metadata"]["name"], "Running", ready=True)
    api.wait_for(lambda: (api.get(jobs_path(namespace, "cost")).get("status") or {})
                 .get("phase") == "Running", 30, "job Running")
    mark = len(apiserver.audit(OPERATOR_USER))
    settle(apiserver, namespace, mark)
    mark = len(apiserver.audit(OPERATOR_USER))
    time.sleep(12 * RESYNC)  # a dozen periodic resyncs (bench/operator_scale.py: 60 s idle)
    assert requests_in(apiserver, namespace, mark) == []
