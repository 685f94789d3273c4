"""The KernelReclaimPolicy API (elastic.dev/v1alpha1): which notebook kernels may be reclaimed.

A policy selects kernel pods in its namespace (by default the pods Jupyter Enterprise Gateway
launches, labelled ``app: enterprise-gateway``, ``component: kernel`` and ``kernel_id``), names
the Jupyter server or gateway that owns the kernels, and states when an idle kernel that holds
GPUs is shut down. The CRD in ``crds/`` is generated from these models; the reclaim controller
parses objects with the same models.

Durations are Go-style strings (``"90s"``, ``"30m"``, ``"1h30m"``), the convention of
``metav1.Duration`` and of ``kubectl``; :func:`duration_seconds` turns one into seconds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from elastic_operator import labels
from elastic_operator.api.common import ApiModel, Condition

KIND = "KernelReclaimPolicy"
PLURAL = "kernelreclaimpolicies"
SINGULAR = "kernelreclaimpolicy"
SHORT_NAMES = ["krp"]

# Enterprise Gateway's kernel-pod.yaml labels every kernel pod with these and with kernel_id.
EG_KERNEL_LABELS = {"app": "enterprise-gateway", "component": "kernel"}
EG_KERNEL_ID_LABEL = "kernel_id"

# How many recent decisions status keeps: enough to see what happened, small enough for etcd.
RECENT_DECISIONS = 20

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_seconds(text: str) -> float:
    """Seconds in a Go-style duration such as ``"1h30m"`` or ``"2.5s"``.

    Raises ``ValueError`` naming the value and the accepted form when ``text`` is not one.
    """
    if not re.fullmatch(DURATION_PATTERN, text or ""):
        raise ValueError(
            f"{text!r} is not a duration; write a number with a unit ms, s, m or h, "
            'e.g. "45s", "30m" or "1h30m"'
        )
    return sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(text))


def _check_duration(text: str) -> str:
    duration_seconds(text)
    return text


Duration = Annotated[
    str,
    AfterValidator(_check_duration),
    Field(json_schema_extra={"pattern": DURATION_PATTERN}),
]


class LabelSelectorRequirement(ApiModel):
    """One matchExpressions entry of a metav1.LabelSelector."""

    key: str = Field(min_length=1)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _values_fit_operator(self) -> LabelSelectorRequirement:
        needs_values = self.operator in ("In", "NotIn")
        if needs_values and not self.values:
            raise ValueError(
                f"selector.matchExpressions key {self.key!r}: operator {self.operator} needs "
                "at least one value"
            )
        if not needs_values and self.values:
            raise ValueError(
                f"selector.matchExpressions key {self.key!r}: operator {self.operator} takes "
                "no values; remove them"
            )
        return self


class LabelSelector(ApiModel):
    """A metav1.LabelSelector: every matchLabels pair and every expression must hold."""

    matchLabels: dict[str, str] = Field(default_factory=dict)
    matchExpressions: list[LabelSelectorRequirement] = Field(default_factory=list)

    def matches(self, pod_labels: Mapping[str, str]) -> bool:
        """Whether an object with these labels is selected (the API server's semantics:
        ``NotIn`` and ``DoesNotExist`` hold for an absent key)."""
        if any(pod_labels.get(k) != v for k, v in self.matchLabels.items()):
            return False
        for req in self.matchExpressions:
            present = req.key in pod_labels
            if req.operator == "Exists":
                ok = present
            elif req.operator == "DoesNotExist":
                ok = not present
            elif req.operator == "In":
                ok = present and pod_labels[req.key] in req.values
            else:
                ok = not present or pod_labels[req.key] not in req.values
            if not ok:
                return False
        return True

    def query(self) -> str:
        """The selector in the ``labelSelector`` query syntax of the Kubernetes list API."""
        parts = [f"{k}={v}" for k, v in sorted(self.matchLabels.items())]
        for req in self.matchExpressions:
            if req.operator == "Exists":
                parts.append(req.key)
            elif req.operator == "DoesNotExist":
                parts.append(f"!{req.key}")
            else:
                verb = "in" if req.operator == "In" else "notin"
                parts.append(f"{req.key} {verb} ({','.join(req.values)})")
        return ",".join(parts)


def _eg_selector() -> LabelSelector:
    return LabelSelector(matchLabels=dict(EG_KERNEL_LABELS))


class SecretKeyRef(ApiModel):
    """A key of a Secret in the policy's namespace."""

    name: str = Field(min_length=1, description="Secret name (same namespace as the policy).")
    key: str = Field(default="token", min_length=1, description="Key holding the token.")


class JupyterSpec(ApiModel):
    """The Jupyter Server or Enterprise Gateway whose /api/kernels owns the selected kernels."""

    url: str = Field(
        pattern=r"^https?://[^\s?#]+$",
        description="Base URL including any base_url path, e.g. http://enterprise-gateway:8888. "
        "No query string: the token comes from tokenSecretRef.",
    )
    tokenSecretRef: SecretKeyRef | None = Field(
        default=None,
        description="Secret key with the server's token, sent as 'Authorization: token ...'. "
        "Unset: no authentication.",
    )
    timeout: Duration = Field(default="10s", description="Timeout of one request.")


# The utilisation gauges dcgm-exporter exports by default (its default-counters.csv), with
# their units: GPU_UTIL in percent, the profiling metric GR_ENGINE_ACTIVE as a 0-1 ratio.
DCGM_METRIC_UNITS = {"DCGM_FI_DEV_GPU_UTIL": "percent", "DCGM_FI_PROF_GR_ENGINE_ACTIVE": "ratio"}
# dcgm-exporter's default collection interval (-c / DCGM_EXPORTER_INTERVAL, 30000 ms).
DCGM_SAMPLE_INTERVAL = "30s"
# A window must hold this many samples: fewer make "idle all window" rest on a handful of
# readings, and one missed scrape would already leave the window uncovered.
MIN_SAMPLES_PER_WINDOW = 10


class GpuIdleSpec(ApiModel):
    """GPU idleness from a DCGM exporter scraped by Prometheus; a kernel whose GPU stayed busy
    is kept whatever its Jupyter activity says."""

    prometheusUrl: str = Field(
        pattern=r"^https?://[^\s?#]+$", description="Prometheus base URL (HTTP API v1)."
    )
    metric: str = Field(
        default="DCGM_FI_DEV_GPU_UTIL",
        pattern=r"^[a-zA-Z_:][a-zA-Z0-9_:]*$",
        description="Utilisation gauge, one series per GPU: DCGM_FI_DEV_GPU_UTIL (percent) or "
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE (0-1 ratio), both exported by dcgm-exporter by default, "
        "or another gauge with its unit.",
    )
    unit: Literal["percent", "ratio"] | None = Field(
        default=None,
        description="Unit of the metric's samples: percent (0-100) or ratio (0-1). Unset: the "
        "unit of the DCGM metric named; required for any other metric.",
    )
    podLabel: str = Field(
        default="pod", pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$", description="Series label: pod."
    )
    namespaceLabel: str = Field(
        default="namespace",
        pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$",
        description="Series label: pod namespace.",
    )
    threshold: float = Field(
        default=5.0,
        ge=0,
        le=100,
        description="Percent, whatever the metric's unit: a GPU above this utilisation at any "
        "sample is busy. 0: only a GPU that read exactly zero all window is idle.",
    )
    sampleInterval: Duration = Field(
        default=DCGM_SAMPLE_INTERVAL,
        description="How often the exporter samples the GPU (dcgm-exporter: 30s unless its -c "
        "flag or DCGM_EXPORTER_INTERVAL, in ms, says otherwise). window must span at least "
        f"{MIN_SAMPLES_PER_WINDOW} samples.",
    )
    window: Duration = Field(
        default="10m",
        description="Every sample in this window must be at or below the threshold; at least "
        f"{MIN_SAMPLES_PER_WINDOW} x sampleInterval.",
    )
    metricLagGrace: Duration = Field(
        default="1m",
        description="Scrape and export lag tolerated: the newest sample may be this old, and "
        "the oldest may start this late in the window. Older or shorter data counts as unknown.",
    )

    def metric_unit(self) -> str:
        """The unit of the metric's samples (``unit``, else the named DCGM metric's)."""
        return self.unit or DCGM_METRIC_UNITS[self.metric]

    @model_validator(mode="after")
    def _unit_known_and_window_long_enough(self) -> GpuIdleSpec:
        if self.unit is None and self.metric not in DCGM_METRIC_UNITS:
            known = ", ".join(f"{m} ({u})" for m, u in DCGM_METRIC_UNITS.items())
            raise ValueError(
                f"unit: metric {self.metric!r} is not one whose unit is known ({known}); "
                "set unit: percent or unit: ratio"
            )
        interval = duration_seconds(self.sampleInterval)
        if interval <= 0:
            raise ValueError(f"sampleInterval: {self.sampleInterval!r} must be longer than 0s")
        shortest = MIN_SAMPLES_PER_WINDOW * interval
        if duration_seconds(self.window) < shortest:
            raise ValueError(
                f"window: {self.window!r} is shorter than {MIN_SAMPLES_PER_WINDOW} samples of "
                f"sampleInterval {self.sampleInterval!r}; make window at least {shortest:g}s "
                "(or set sampleInterval to the exporter's real interval)"
            )
        return self


class ReclaimAction(StrEnum):
    SHUTDOWN = "shutdown"
    DELETE_POD = "deletePod"


class KernelReclaimPolicySpec(ApiModel):
    """When an idle notebook kernel that holds GPUs is reclaimed."""

    selector: LabelSelector = Field(
        default_factory=_eg_selector,
        description="Kernel pods in this namespace. Default: Enterprise Gateway's kernel pods.",
    )
    kernelIdLabel: str = Field(
        default=EG_KERNEL_ID_LABEL,
        min_length=1,
        description="Pod label holding the Jupyter kernel id.",
    )
    jupyter: JupyterSpec
    idleAfter: Duration = Field(
        default="1h", description="Idle this long by the kernel's last_activity to be eligible."
    )
    checkEvery: Duration = Field(default="1m", description="How often the policy is evaluated.")
    minRunning: Duration = Field(
        default="0s", description="A kernel pod younger than this is never reclaimed."
    )
    startingGrace: Duration = Field(
        default="5m",
        description="A kernel still 'starting' this long after its pod became Running, with no "
        "activity since, was started and never connected to (jupyter_server leaves such "
        "kernels 'starting'): it is then judged like an idle one. Before that it is kept.",
    )
    warningPeriod: Duration = Field(
        default="10m",
        description="A kernel is marked (annotation elastic.dev/reclaim-at and an event) this "
        "long before it is reclaimed; activity meanwhile clears the mark. 0s: no warning.",
    )
    cullBusy: bool = Field(default=False, description="Also reclaim kernels that are busy.")
    cullConnected: bool = Field(
        default=False, description="Also reclaim kernels with open client connections."
    )
    gpuOnly: bool = Field(default=True, description="Only reclaim kernel pods that request GPUs.")
    gpuResourceName: str = Field(
        default=labels.DEFAULT_GPU_RESOURCE, min_length=1, description="Extended resource name."
    )
    gpuIdle: GpuIdleSpec | None = Field(
        default=None, description="Also require GPU idleness from Prometheus. Unset: off."
    )
    action: ReclaimAction = Field(
        default=ReclaimAction.SHUTDOWN,
        description="shutdown: DELETE /api/kernels/{id} (graceful, the gateway removes the pod);"
        " deletePod: delete the kernel pod.",
    )
    dryRun: bool = Field(
        default=False, description="Decide and report (status, events) but change nothing."
    )

    def seconds(self, name: str) -> float:
        """A duration field of this spec in seconds, e.g. ``spec.seconds("idleAfter")``."""
        return duration_seconds(getattr(self, name))

    @model_validator(mode="after")
    def _check_every_positive(self) -> KernelReclaimPolicySpec:
        if duration_seconds(self.checkEvery) <= 0:
            raise ValueError(f"checkEvery: {self.checkEvery!r} must be longer than 0s")
        return self


class DecisionRecord(ApiModel):
    """One non-trivial decision of a check (a warning, a reclaim, a cleared mark)."""

    time: str
    pod: str
    kernelId: str = ""
    action: Literal["warn", "reclaim", "clearWarning", "wouldReclaim", "failed"]
    reason: str
    gpus: int = Field(default=0, ge=0)


class KernelReclaimPolicyStatus(ApiModel):
    """Observed state, written only by the reclaim controller through the status subresource."""

    lastCheckTime: str | None = None
    kernelsSeen: int = Field(default=0, ge=0, description="Selected kernel pods last check.")
    eligible: int = Field(default=0, ge=0, description="Of them, idle by every rule last check.")
    warned: int = Field(default=0, ge=0, description="Kernel pods marked for reclaim now.")
    reclaimed: int = Field(default=0, ge=0, description="Kernels reclaimed since creation.")
    gpusReclaimed: int = Field(default=0, ge=0, description="GPUs freed since creation.")
    gpuHoursReclaimed: float = Field(
        default=0.0,
        ge=0,
        description="GPU-hours freed since creation: for each reclaim, its GPUs x how long the "
        "kernel had been idle (the idle time the reclaim ended).",
    )
    recentDecisions: list[DecisionRecord] = Field(
        default_factory=list, description=f"The last {RECENT_DECISIONS} decisions, newest last."
    )
    conditions: list[Condition] = Field(default_factory=list)
    observedGeneration: int = Field(default=0, ge=0)


PRINTER_COLUMNS = [
    {"name": "Seen", "type": "integer", "jsonPath": ".status.kernelsSeen"},
    {"name": "Idle", "type": "integer", "jsonPath": ".status.eligible"},
    {"name": "Warned", "type": "integer", "jsonPath": ".status.warned"},
    {"name": "Reclaimed", "type": "integer", "jsonPath": ".status.reclaimed"},
    {"name": "GPUs", "type": "integer", "jsonPath": ".status.gpusReclaimed"},
    {"name": "GPU-Hours", "type": "number", "jsonPath": ".status.gpuHoursReclaimed"},
    {"name": "DryRun", "type": "boolean", "jsonPath": ".spec.dryRun"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]
