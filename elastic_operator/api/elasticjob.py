"""The ElasticJob API (elastic.dev/v1alpha1): the single source of the CRD schema.

The CRD in ``crds/`` is generated from these models (``elastic-operator crds``); the operator
parses objects with the same models, so the schema the API server enforces and the one the
operator assumes cannot drift apart. Rules the OpenAPI schema cannot express (e.g. a worker
template without containers) are checked in :func:`validate_spec` and reported as an Invalid
condition naming the field.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import Field, model_validator

from elastic_operator import labels
from elastic_operator.api.common import ApiModel, Condition

KIND = "ElasticJob"
PLURAL = "elasticjobs"
SINGULAR = "elasticjob"
SHORT_NAMES = ["ej"]

PRESERVE = {"x-kubernetes-preserve-unknown-fields": True}


class Phase(StrEnum):
    """Lifecycle of a job, as shown in the Phase printer column."""

    PENDING = "Pending"
    RUNNING = "Running"
    SCALING = "Scaling"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class LRScalingPolicy(StrEnum):
    LINEAR = "linear"
    SQRT = "sqrt"
    NONE = "none"


class Batching(StrEnum):
    FIXED_GLOBAL = "fixedGlobal"
    FIXED_PER_WORKER = "fixedPerWorker"


class RendezvousSpec(ApiModel):
    """Where workers meet. No endpoints: the operator runs an etcd for the namespace."""

    endpoints: list[str] = Field(
        default_factory=list,
        description="etcd v3 client endpoints (host:port). Empty: operator-managed etcd.",
        json_schema_extra={"items": {"type": "string", "pattern": r"^[^\s:/]+:[0-9]{1,5}$"}},
    )
    credentialsSecret: str | None = Field(
        default=None,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="Only with endpoints: a Secret in the job's namespace with the etcd "
        "credentials of this job (keys username, password; ca.crt for TLS), mounted into the "
        "workers. The operator-managed etcd gets a per-job Secret of its own.",
    )

    @model_validator(mode="after")
    def _secret_needs_endpoints(self) -> RendezvousSpec:
        if self.credentialsSecret and not self.endpoints:
            raise ValueError("credentialsSecret is only for your own etcd: set "
                             "spec.rendezvous.endpoints too, or remove credentialsSecret (the "
                             "operator-managed etcd gets a Secret per job)")
        return self


class LRScalingSpec(ApiModel):
    """How the learning rate follows the world size (see launcher.training)."""

    policy: LRScalingPolicy = Field(
        default=LRScalingPolicy.LINEAR,
        description="linear: lr * W/base; sqrt: lr * sqrt(W/base); none: unchanged.",
    )
    baseWorldSize: int | None = Field(
        default=None,
        ge=1,
        description="World size the base LR was tuned for. Default: minReplicas * nprocPerNode.",
    )


class CheckpointSpec(ApiModel):
    """Where and how often workers checkpoint; the directory must be shared by all workers."""

    directory: str = Field(
        default="/checkpoints", min_length=1, description="Checkpoint directory inside the pod."
    )
    intervalSteps: int = Field(default=100, ge=1, description="Save every N optimizer steps.")
    keep: int = Field(default=3, ge=1, description="How many checkpoints to keep.")


class AutoscaleSpec(ApiModel):
    """Opt-in growth into free GPUs; the autoscaler never touches a job without it."""

    enabled: bool = Field(default=False, description="Let the autoscaler move spec.replicas.")
    stabilizationWindowSeconds: int = Field(
        default=60,
        ge=0,
        description="GPUs must stay free this long without a break before the job grows "
                    "into them; shrinking for higher-priority work is immediate.",
    )
    unschedulableTimeoutSeconds: int = Field(
        default=120,
        ge=1,
        description="Replicas whose pods stay Unschedulable this long are given back.",
    )


class ElasticJobSpec(ApiModel):
    """Desired state of an elastic training job."""

    minReplicas: int = Field(default=1, ge=1, description="Fewest worker pods to keep training.")
    maxReplicas: int = Field(ge=1, description="Most worker pods the job may grow to.")
    replicas: int | None = Field(
        default=None,
        ge=0,
        description="Desired worker pods (kubectl scale, HPA, autoscaler); clamped to [min, max].",
    )
    nprocPerNode: int = Field(default=1, ge=1, le=64, description="Training processes per pod.")
    template: dict[str, Any] = Field(
        description="Worker PodTemplateSpec. GPUs come from its containers' resource requests.",
        json_schema_extra=PRESERVE | {"type": "object"},
    )
    rendezvous: RendezvousSpec = Field(default_factory=RendezvousSpec)
    lrScaling: LRScalingSpec = Field(default_factory=LRScalingSpec)
    batching: Batching = Field(
        default=Batching.FIXED_PER_WORKER,
        description="fixedGlobal: keep the global batch via gradient accumulation (LR fixed); "
        "fixedPerWorker: the global batch follows the world size (LR scales).",
    )
    maxRestarts: int = Field(default=3, ge=0, description="Worker failures tolerated in all.")
    belowMinTimeoutSeconds: int = Field(
        default=600,
        ge=1,
        description="Fail the job after this long with fewer than minReplicas ready workers.",
    )
    hangTimeoutSeconds: float = Field(
        default=300, gt=0, description="A training process silent this long counts as hung."
    )
    priority: int = Field(
        default=0, description="Higher gets freed GPUs first; lower shrinks first."
    )
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    autoscale: AutoscaleSpec = Field(default_factory=AutoscaleSpec)


class WorkerFailure(ApiModel):
    """The last failure a worker reported (from its termination message or the etcd key)."""

    pod: str
    replicaIndex: int = Field(ge=0)
    reason: str
    message: str = ""
    rank: int | None = None
    exitCode: int | None = None
    time: str = ""


class ElasticJobStatus(ApiModel):
    """Observed state, written only by the operator through the status subresource."""

    phase: Phase = Phase.PENDING
    replicas: int = Field(default=0, ge=0, description="Worker pods that exist (scale status).")
    readyReplicas: int = Field(default=0, ge=0)
    worldSize: int = Field(default=0, ge=0, description="Training processes in the current round.")
    generation: int = Field(default=0, ge=0, description="Rendezvous generation (re-formations).")
    restarts: int = Field(default=0, ge=0, description="Failed workers replaced so far.")
    lastScaleTime: str | None = None
    selector: str = Field(default="", description="Label selector of the workers (for /scale).")
    lastFailure: WorkerFailure | None = None
    conditions: list[Condition] = Field(default_factory=list)
    observedGeneration: int = Field(default=0, ge=0)


class ElasticJob(ApiModel):
    """The whole object as the operator reads it (metadata kept as the API server sent it)."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    apiVersion: Literal["elastic.dev/v1alpha1"] = labels.API_VERSION  # type: ignore[assignment]
    kind: Literal["ElasticJob"] = KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: ElasticJobSpec
    status: ElasticJobStatus = Field(default_factory=ElasticJobStatus)


PRINTER_COLUMNS = [
    {"name": "Min", "type": "integer", "jsonPath": ".spec.minReplicas"},
    {"name": "Max", "type": "integer", "jsonPath": ".spec.maxReplicas"},
    {"name": "Desired", "type": "integer", "jsonPath": ".spec.replicas"},
    {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

# Rules across fields that the CRD enforces with CEL (x-kubernetes-validations).
SPEC_RULES = [
    {
        "rule": "self.minReplicas <= self.maxReplicas",
        "message": "spec.minReplicas must be <= spec.maxReplicas",
        "fieldPath": ".minReplicas",
    },
]


class SpecError(ValueError):
    """A spec the operator cannot run; ``field`` is the dotted path, ``fix`` what to do."""

    def __init__(self, field: str, problem: str, fix: str) -> None:
        super().__init__(f"{field}: {problem}; {fix}")
        self.field = field
        self.problem = problem
        self.fix = fix


def validate_spec(spec: ElasticJobSpec) -> None:
    """Raise :class:`SpecError` for what the schema cannot express (or a server did not check).

    The CRD already enforces ranges, enums and min <= max; this repeats min <= max because a
    cluster without CEL support (Kubernetes < 1.25) would let it through.
    """
    if spec.minReplicas > spec.maxReplicas:
        raise SpecError(
            "spec.minReplicas",
            f"{spec.minReplicas} is greater than spec.maxReplicas {spec.maxReplicas}",
            "set minReplicas <= maxReplicas",
        )
    pod_spec = spec.template.get("spec")
    if not isinstance(pod_spec, dict):
        raise SpecError(
            "spec.template.spec", "is missing", "give the worker PodTemplateSpec a spec"
        )
    containers = pod_spec.get("containers")
    if not isinstance(containers, list) or not containers:
        raise SpecError(
            "spec.template.spec.containers",
            "is empty",
            "add at least one container running `python -m launcher train.py`",
        )
    for i, container in enumerate(containers):
        if not isinstance(container, dict) or not container.get("name"):
            raise SpecError(
                f"spec.template.spec.containers[{i}].name", "is missing", "name the container"
            )
    restart = pod_spec.get("restartPolicy", "Never")
    if restart != "Never":
        raise SpecError(
            "spec.template.spec.restartPolicy",
            f"is {restart!r}",
            "use Never (the operator replaces failed workers itself) or leave it out",
        )


def desired_replicas(spec: ElasticJobSpec) -> int:
    """The worker count a spec asks for: spec.replicas (minReplicas when absent) clamped to
    [minReplicas, maxReplicas]. The job controller creates that many workers and the autoscaler
    decides from it, so both read it here."""
    wanted = spec.minReplicas if spec.replicas is None else spec.replicas
    return max(spec.minReplicas, min(spec.maxReplicas, wanted))
