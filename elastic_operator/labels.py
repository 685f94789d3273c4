"""Label, annotation and finalizer keys: one place, so the operator, the autoscaler, the reclaim
controller and the local cluster never disagree on a spelling."""

from typing import Final

GROUP: Final = "elastic.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"

# On worker pods and the headless Service.
JOB_NAME: Final = f"{GROUP}/job-name"
REPLICA_INDEX: Final = f"{GROUP}/replica-index"
ROLE: Final = f"{GROUP}/role"  # "worker" | "etcd"

# Pod annotation: "never" exempts a notebook kernel pod from idle reclaim.
RECLAIM: Final = f"{GROUP}/reclaim"
# Pod annotation: when the reclaim controller will reclaim a warned kernel (RFC 3339 time).
RECLAIM_AT: Final = f"{GROUP}/reclaim-at"

DEFAULT_GPU_RESOURCE: Final = "nvidia.com/gpu"

# Worker pod annotation: when the operator counted this failed pod in status.restarts (RFC 3339).
# Keeps counting exactly-once across operator restarts and dates the restart backoff.
FAILURE_RECORDED_AT: Final = f"{GROUP}/failure-recorded-at"

# Pod label: "true" marks a pending pod of a protected class; the autoscaler shrinks elastic
# jobs (never below their minReplicas) to make room for it.
PROTECTED: Final = f"{GROUP}/protected"
