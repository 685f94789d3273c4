"""Types shared by every custom resource of elastic.dev: Kubernetes-style conditions and the
base model that keeps the wire names (camelCase) the CRD schemas are generated from."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from elastic_operator.api.kube import now_rfc3339


class ApiModel(BaseModel):
    """Base of every API model: camelCase on the wire, unknown fields refused.

    ``extra="forbid"`` makes a typo in a spec field an error naming the field rather than a
    silently ignored setting; the CRD schema prunes unknown fields the same way.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=True)

    def wire(self) -> dict:
        """The object as the Kubernetes API stores it (camelCase keys, unset optionals left out)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class Condition(ApiModel):
    """A Kubernetes-style condition (the ``metav1.Condition`` shape)."""

    type: str = Field(description="Condition type, e.g. Ready, Invalid, Failed, Scaling.")
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(default="", description="CamelCase machine-readable reason.")
    message: str = Field(default="", description="Human-readable explanation.")
    lastTransitionTime: str = Field(
        default="", description="RFC 3339 time at which status last changed."
    )
    observedGeneration: int | None = Field(default=None, ge=0)


def set_condition(
    conditions: list[Condition], new: Condition, now: datetime | None = None
) -> list[Condition]:
    """Return ``conditions`` with ``new`` merged in by type.

    lastTransitionTime changes only when the status flips, as Kubernetes clients expect, so a
    condition re-asserted on every reconcile does not look like a fresh transition.
    """
    out: list[Condition] = []
    replaced = False
    for cond in conditions:
        if cond.type != new.type:
            out.append(cond)
            continue
        replaced = True
        keep_time = cond.status == new.status and cond.lastTransitionTime
        stamp = cond.lastTransitionTime if keep_time else now_rfc3339(now)
        out.append(new.model_copy(update={"lastTransitionTime": stamp}))
    if not replaced:
        out.append(new.model_copy(update={"lastTransitionTime": now_rfc3339(now)}))
    return out
