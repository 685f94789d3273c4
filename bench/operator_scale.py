"""Operator scale benchmark: many ElasticJobs at once against the emulated API server.

Creates ``--jobs`` ElasticJobs of ``--workers`` workers each and measures the time from the
first create until every worker pod exists and every job's status is current
(``observedGeneration == generation`` and ``status.replicas == workers``), then the peak RSS
(VmHWM) of the operator process. The operator runs as a subprocess exactly as in the tests
(``elastic-operator run`` over HTTP); the emulator runs in this process.

Usage: ``python bench/operator_scale.py [--jobs 100] [--workers 4]``.
Last line: ``jobs=<n> seconds=<t> rss_mb=<m>``. Goal: < 30 s and < 200 MB on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from elastic_operator import labels
from tests.harness import (
    OperatorProcess,
    create_namespace,
    elastic_job,
    jobs_path,
    pods_path,
    start_cluster,
)


def peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set) of ``pid`` in MiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="operator-scale-") as tmp:
        cluster = start_cluster(Path(tmp))
        operator = OperatorProcess(cluster, Path(tmp), ["--resync", "10"])
        try:
            api = cluster.client()
            ns = create_namespace(api, "bench")
            operator.start()
            idle_rss = peak_rss_mb(operator.pid)
            started = time.monotonic()
            for i in range(args.jobs):
                api.create(jobs_path(ns), elastic_job(f"job-{i:03d}", 1, args.workers,
                                                      replicas=args.workers))
            created = time.monotonic() - started
            pods_done = status_done = None
            while time.monotonic() - started < args.timeout:
                elapsed = time.monotonic() - started
                if pods_done is None:
                    pods = api.list(pods_path(ns), labels.JOB_NAME)
                    if len(pods) >= args.jobs * args.workers:
                        pods_done = elapsed
                jobs = api.list(jobs_path(ns))
                current = [j for j in jobs if (j.get("status") or {}).get("observedGeneration")
                           == j["metadata"]["generation"]
                           and j["status"].get("replicas") == args.workers]
                if pods_done is not None and len(current) == args.jobs:
                    status_done = elapsed
                    break
                time.sleep(0.1)
            if status_done is None:
                print(f"not converged within {args.timeout}s", file=sys.stderr)
                return 1
            pods = api.list(pods_path(ns), labels.JOB_NAME)
            assert len(pods) == args.jobs * args.workers, f"{len(pods)} pods: duplicates?"
            rss = peak_rss_mb(operator.pid)
        finally:
            operator.stop()
            cluster.server.stop()

    print(f"{'jobs created (s)':<28}{created:8.2f}")
    print(f"{'all pods exist (s)':<28}{pods_done:8.2f}")
    print(f"{'all statuses current (s)':<28}{status_done:8.2f}")
    print(f"{'operator RSS idle (MB)':<28}{idle_rss:8.1f}")
    print(f"{'operator RSS peak (MB)':<28}{rss:8.1f}")
    print(f"jobs={args.jobs} seconds={status_done:.2f} rss_mb={rss:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
