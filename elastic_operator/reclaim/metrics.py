"""Prometheus metrics of the reclaim controller, registered in the operator's registry
(``memo.metrics.registry``) so they are served with its other metrics on ``--metrics-port``.

- ``elastic_operator_reclaimed_kernels_total{namespace,policy,action}``;
- ``elastic_operator_reclaimed_gpus_total{namespace,policy}``: GPUs freed;
- ``elastic_operator_reclaimed_gpu_hours_total{namespace,policy}``: GPUs x idle time at
  reclaim, the idle GPU-hours each reclaim ended;
- ``elastic_operator_reclaim_check_failures_total{namespace,policy,reason}``: checks that
  decided nothing (Jupyter unreachable, token unreadable, invalid spec);
- ``elastic_operator_reclaim_kernels{namespace,policy,state}``: at the last check that could
  decide, the kernel pods ``seen``, ``idle`` (eligible by every rule) and ``warned``;
- ``elastic_operator_reclaim_idle_gpus{namespace,policy}``: GPUs those idle kernels hold.
"""

from __future__ import annotations

import contextlib
import weakref

from prometheus_client import CollectorRegistry, Counter, Gauge

from elastic_operator.reclaim.plan import gpu_hours


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
        self.kernels_now = Gauge(
            "elastic_operator_reclaim_kernels",
            "Kernel pods of a KernelReclaimPolicy at its last check, by state (seen, idle, "
            "warned)",
            ["namespace", "policy", "state"],
            registry=registry,
        )
        self.idle_gpus = Gauge(
            "elastic_operator_reclaim_idle_gpus",
            "GPUs held by kernels idle by every rule at the policy's last check",
            ["namespace", "policy"],
            registry=registry,
        )

    def reclaimed(
        self, namespace: str, policy: str, action: str, gpus: int, idle_seconds: float
    ) -> None:
        """Count one successful reclaim."""
        self.kernels.labels(namespace, policy, action).inc()
        self.gpus.labels(namespace, policy).inc(gpus)
        self.gpu_hours.labels(namespace, policy).inc(gpu_hours(gpus, idle_seconds))

    def checked(
        self, namespace: str, policy: str, *, seen: int, idle: int, warned: int, idle_gpus: int
    ) -> None:
        """Set the gauges from a check that could decide."""
        for state, value in (("seen", seen), ("idle", idle), ("warned", warned)):
            self.kernels_now.labels(namespace, policy, state).set(value)
        self.idle_gpus.labels(namespace, policy).set(idle_gpus)

    def forget(self, namespace: str, policy: str) -> None:
        """Drop a policy's gauges (it was deleted): a gone policy holds no kernels."""
        for state in ("seen", "idle", "warned"):
            with contextlib.suppress(KeyError):
                self.kernels_now.remove(namespace, policy, state)
        with contextlib.suppress(KeyError):
            self.idle_gpus.remove(namespace, policy)


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
