"""Prometheus metrics of the reclaim controller, registered in the operator's registry
(``memo.metrics.registry``) so they are served with its other metrics on ``--metrics-port``.

- ``elastic_operator_reclaimed_kernels_total{namespace,policy,action}``;
- ``elastic_operator_reclaimed_gpus_total{namespace,policy}``: GPUs freed;
- ``elastic_operator_reclaimed_gpu_hours_total{namespace,policy}``: GPUs x idle time at
  reclaim, the idle GPU-hours each reclaim ended;
- ``elastic_operator_reclaim_check_failures_total{namespace,policy,reason}``: checks that
  decided nothing (Jupyter unreachable, token unreadable, invalid spec).
"""

from __future__ import annotations

import weakref

from prometheus_client import CollectorRegistry, Counter


class ReclaimMetrics:
    """The reclaim counters in one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.kernels = Counter(
            "elastic_operator_reclaimed_kernels",
            "Notebook kernels reclaimed by a KernelReclaimPolicy",
            ["namespace", "policy", "action"],
            registry=registry,
        )
        self.gpus = Counter(
            "elastic_operator_reclaimed_gpus",
            "GPUs freed by reclaiming notebook kernels",
            ["namespace", "policy"],
            registry=registry,
        )
        self.gpu_hours = Counter(
            "elastic_operator_reclaimed_gpu_hours",
            "GPU-hours the reclaimed kernels had held their GPUs idle (GPUs x idle time)",
            ["namespace", "policy"],
            registry=registry,
        )
        self.check_failures = Counter(
            "elastic_operator_reclaim_check_failures",
            "Policy checks that decided nothing",
            ["namespace", "policy", "reason"],
            registry=registry,
        )

    def reclaimed(
        self, namespace: str, policy: str, action: str, gpus: int, idle_seconds: float
    ) -> None:
        """Count one successful reclaim."""
        self.kernels.labels(namespace, policy, action).inc()
        self.gpus.labels(namespace, policy).inc(gpus)
        self.gpu_hours.labels(namespace, policy).inc(gpus * idle_seconds / 3600.0)


_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, ReclaimMetrics] = (
    weakref.WeakKeyDictionary()
)


def reclaim_metrics(registry: CollectorRegistry) -> ReclaimMetrics:
    """The reclaim counters of ``registry``, registered there on first use.

    One set per registry: kopf hands every object its own copy of ``memo``, so the counters
    cannot live there, and registering them twice in one registry is an error.
    """
    metrics = _BY_REGISTRY.get(registry)
    if metrics is None:
        metrics = _BY_REGISTRY[registry] = ReclaimMetrics(registry)
    return metrics
