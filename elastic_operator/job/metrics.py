"""Prometheus metrics of the operator (prometheus-client), served on ``--metrics-port``.

Names are stable API for dashboards and alerts:

- ``elastic_operator_jobs{phase}``: ElasticJobs this operator reconciles, by phase (gauge);
- ``elastic_operator_pods_created_total`` / ``elastic_operator_pods_deleted_total{reason}``;
- ``elastic_operator_worker_restarts_total``: failed workers counted (and replaced);
- ``elastic_operator_reconcile_duration_seconds``: one reconcile of one job (histogram);
- ``elastic_operator_reconcile_errors_total``: reconciles that raised (and were retried).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from elastic_operator.api.elasticjob import Phase


class Metrics:
    """One set of the operator's metrics in its own registry (tests can make several)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.jobs = Gauge(
            "elastic_operator_jobs", "ElasticJobs by phase", ["phase"], registry=self.registry
        )
        self.pods_created = Counter(
            "elastic_operator_pods_created", "Worker pods created", registry=self.registry
        )
        self.pods_deleted = Counter(
            "elastic_operator_pods_deleted",
            "Worker pods deleted",
            ["reason"],
            registry=self.registry,
        )
        self.restarts = Counter(
            "elastic_operator_worker_restarts", "Failed workers counted", registry=self.registry
        )
        self.reconcile_seconds = Histogram(
            "elastic_operator_reconcile_duration_seconds",
            "Duration of one reconcile of one job",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.reconcile_errors = Counter(
            "elastic_operator_reconcile_errors", "Reconciles that raised", registry=self.registry
        )
        self._phases: dict[tuple[str, str], str] = {}
        for phase in Phase:
            self.jobs.labels(phase=phase.value).set(0)

    def job_phase(self, key: tuple[str, str], phase: str | None) -> None:
        """Record the phase of job ``key`` (None: the job is gone)."""
        old = self._phases.pop(key, None)
        if phase is not None:
            self._phases[key] = phase
        if old == phase:
            return
        for value in Phase:
            count = sum(1 for p in self._phases.values() if p == value.value)
            self.jobs.labels(phase=value.value).set(count)

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        """Serve ``/metrics`` on ``port`` from a daemon thread (0: do not serve)."""
        if port:
            start_http_server(port, addr=address, registry=self.registry)
