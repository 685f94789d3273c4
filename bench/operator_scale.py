"""Operator scale benchmark: many ElasticJobs at once against the emulated API server.

Creates ``--jobs`` ElasticJobs of ``--workers`` workers each and measures the time from the
first create until every worker pod exists and every job's status is current
(``observedGeneration == generation`` and ``status.replicas == workers``), the operator's peak
RSS (VmHWM), and the operator's API requests on the jobs' namespace (the emulator's audit
log): per job while converging, and in all during ``--idle`` seconds of idle running after
convergence. The operator runs as a subprocess exactly as in the tests (``elastic-operator
run`` over HTTP, default resync); the emulator runs in this process and convergence is read
from its store directly, so measuring adds no load to either.

    python bench/operator_scale.py [--jobs 100] [--workers 4]
    python bench/operator_scale.py --scaling          # 100 and 1,000 jobs of 8 workers

Last line, one size: ``jobs=<n> seconds=<t> rss_mb=<m> requests_per_job=<r>
idle_requests=<i>``. With ``--scaling``: ``seconds_100=X seconds_1000=X growth=X rss_mb=Y
requests_per_job=Z idle_requests=W`` (growth = t(1000)/t(100), 10 is linear; rss, requests
and idle requests are the larger size's). Goal on 2 cores: t(100) <= 5 s, t(1000) <= 60 s,
growth <= 12, RSS <= 300 MB, idle_requests = 0.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from elastic_operator import labels
from tests.harness import (
    OPERATOR_USER,
    Cluster,
    OperatorProcess,
    create_namespace,
    elastic_job,
    jobs_path,
    start_cluster,
)


def peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set) of ``pid`` in MiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


@dataclass(frozen=True)
class Result:
    jobs: int
    created_s: float
    pods_s: float
    seconds: float
    rss_mb: float
    requests_per_job: float
    idle_requests: int


def namespace_requests(cluster: Cluster, namespace: str, since: int = 0) -> int:
    return sum(1 for r in cluster.audit(OPERATOR_USER)[since:] if r.namespace == namespace)


def converged(cluster: Cluster, namespace: str, jobs: int, workers: int) -> tuple[bool, bool]:
    """(every pod exists, every status is current), read from the emulator's store."""
    server = cluster.server.server
    if server.count("v1", "pods", namespace, labels.JOB_NAME) < jobs * workers:
        return False, False
    items = server.objects(labels.API_VERSION, "elasticjobs", namespace)
    current = sum(1 for j in items
                  if (j.get("status") or {}).get("observedGeneration")
                  == j["metadata"]["generation"] and j["status"].get("replicas") == workers)
    return True, current == jobs


def run(jobs: int, workers: int, timeout: float, idle: float) -> Result:
    with tempfile.TemporaryDirectory(prefix="operator-scale-") as tmp:
        cluster = start_cluster(Path(tmp))
        operator = OperatorProcess(cluster, Path(tmp), [])
        try:
            api = cluster.client()
            ns = create_namespace(api, "bench")
            operator.start()
            mark = len(cluster.audit(OPERATOR_USER))
            started = time.monotonic()
            for i in range(jobs):
                api.create(jobs_path(ns), elastic_job(f"job-{i:04d}", 1, workers,
                                                      replicas=workers))
            created = time.monotonic() - started
            pods_done = status_done = None
            while time.monotonic() - started < timeout:
                pods_ok, status_ok = converged(cluster, ns, jobs, workers)
                elapsed = time.monotonic() - started
                if pods_ok and pods_done is None:
                    pods_done = elapsed
                if pods_ok and status_ok:
                    status_done = elapsed
                    break
                time.sleep(0.5)
            if status_done is None or pods_done is None:
                raise SystemExit(f"{jobs} jobs: not converged within {timeout}s")
            pods = cluster.server.server.objects("v1", "pods", ns, labels.JOB_NAME)
            assert len(pods) == jobs * workers, f"{len(pods)} pods: duplicates?"
            time.sleep(2.0)  # the last events' echoes
            requests = namespace_requests(cluster, ns, mark)
            mark = len(cluster.audit(OPERATOR_USER))
            time.sleep(idle)
            idle_requests = namespace_requests(cluster, ns, mark)
            if idle_requests:
                kinds = Counter(f"{r.verb} {r.resource}/{r.subresource}".rstrip("/")
                                for r in cluster.audit(OPERATOR_USER)[mark:]
                                if r.namespace == ns)
                print(f"{jobs} jobs, requests while idle: {dict(kinds.most_common(5))}")
            rss = peak_rss_mb(operator.pid)
        finally:
            operator.stop()
            cluster.server.stop()
    return Result(jobs, created, pods_done, status_done, rss, requests / jobs, idle_requests)


def report(result: Result) -> None:
    print(f"--- {result.jobs} jobs")
    print(f"{'jobs created (s)':<30}{result.created_s:8.2f}")
    print(f"{'all pods exist (s)':<30}{result.pods_s:8.2f}")
    print(f"{'all statuses current (s)':<30}{result.seconds:8.2f}")
    print(f"{'operator RSS peak (MB)':<30}{result.rss_mb:8.1f}")
    print(f"{'API requests per job':<30}{result.requests_per_job:8.2f}")
    print(f"{'requests while idle':<30}{result.idle_requests:8d}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--scaling", action="store_true",
                        help="100 and 1,000 jobs of 8 workers in one run")
    parser.add_argument("--idle", type=float, default=60.0,
                        help="seconds of idle running after convergence (requests counted)")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    if not args.scaling:
        result = run(args.jobs, args.workers, args.timeout, args.idle)
        report(result)
        print(f"jobs={result.jobs} seconds={result.seconds:.2f} rss_mb={result.rss_mb:.1f} "
              f"requests_per_job={result.requests_per_job:.2f} "
              f"idle_requests={result.idle_requests}")
        return 0
    small = run(100, 8, args.timeout, args.idle)
    report(small)
    large = run(1000, 8, args.timeout, args.idle)
    report(large)
    print(f"seconds_100={small.seconds:.2f} seconds_1000={large.seconds:.2f} "
          f"growth={large.seconds / small.seconds:.1f} rss_mb={large.rss_mb:.1f} "
          f"requests_per_job={large.requests_per_job:.2f} "
          f"idle_requests={small.idle_requests + large.idle_requests}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
