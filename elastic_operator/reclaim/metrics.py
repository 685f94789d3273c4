"""Prometheus metrics of the reclaim controller (served with the operator's other metrics from
prometheus_client's default registry)."""

from __future__ import annotations

from prometheus_client import Counter

KERNELS_RECLAIMED = Counter(
    "elastic_reclaim_kernels_total",
    "Notebook kernels reclaimed (shut down or pod deleted) by a KernelReclaimPolicy.",
    ["namespace", "policy", "action"],
)
GPUS_RECLAIMED = Counter(
    "elastic_reclaim_gpus_total",
    "GPUs freed by reclaiming notebook kernels.",
    ["namespace", "policy"],
)
GPU_HOURS_RECLAIMED = Counter(
    "elastic_reclaim_idle_gpu_hours_total",
    "GPU-hours the reclaimed kernels had held their GPUs while idle (GPUs x idle time at reclaim): "
    "the waste each reclaim ended.",
    ["namespace", "policy"],
)
CHECK_FAILURES = Counter(
    "elastic_reclaim_check_failures_total",
    "Policy checks that decided nothing (Jupyter unreachable, token unreadable, invalid spec).",
    ["namespace", "policy", "reason"],
)


def record_reclaim(
    namespace: str, policy: str, action: str, gpus: int, idle_seconds: float
) -> None:
    """Count one successful reclaim."""
    KERNELS_RECLAIMED.labels(namespace, policy, action).inc()
    GPUS_RECLAIMED.labels(namespace, policy).inc(gpus)
    GPU_HOURS_RECLAIMED.labels(namespace, policy).inc(gpus * idle_seconds / 3600.0)
