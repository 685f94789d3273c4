"""Kubernetes arithmetic every controller shares: GPU quantities, a pod's GPU request,
taint tolerations, terminal pod phases, API timestamps (RFC 3339, both ways) and the Event
value the controllers record.

One definition, so the autoscaler (which places workers by GPU count) and the reclaim
controller (which reports the GPUs a reclaim frees) can never disagree about how many GPUs a
pod holds. Pure functions of API objects as plain dicts; nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from elastic_operator.labels import DEFAULT_GPU_RESOURCE

Obj = Mapping[str, Any]

# Pod phases after which a pod holds nothing on its node any more.
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True)
class Event:
    """A core/v1 Event to record on an object (the job controller's plans and the autoscaler's
    resizes both write them, so the value lives below both)."""

    type: str  # Normal | Warning
    reason: str
    message: str


class QuantityError(ValueError):
    """A GPU quantity that is not a whole number of devices."""


def gpu_quantity(value: Any, where: str) -> int:
    """A whole number of GPUs from a resource quantity (``2``, ``"2"``, ``"2000m"``).

    Kubernetes only accepts integral extended resources; anything else raises
    :class:`QuantityError` naming ``where`` and the value.
    """
    if isinstance(value, bool):
        raise QuantityError(f"{where}: {value!r} is not a GPU count; use a whole number like 1")
    if isinstance(value, int):
        amount = value
    elif isinstance(value, float) and value.is_integer():
        amount = int(value)
    else:
        text = str(value).strip()
        try:
            if text.endswith("m"):
                millis = int(text[:-1])
                if millis % 1000:
                    raise ValueError(text)
                amount = millis // 1000
            else:
                amount = int(text)
        except ValueError:
            raise QuantityError(
                f"{where}: {value!r} is not a GPU count; use a whole number like 1"
            ) from None
    if amount < 0:
        raise QuantityError(f"{where}: {value!r} is negative; use a whole number >= 0")
    return amount


def pod_gpu_request(pod_spec: Obj, resource: str = DEFAULT_GPU_RESOURCE) -> int:
    """GPUs one pod (or one worker of a template) needs on a single node.

    A container's request defaults to its limit (GPUs are usually given only as limits); the
    pod needs the sum over its containers, or the largest init container if that is more, as
    init containers run one at a time before the others. Raises :class:`QuantityError` for a
    quantity that is not a whole number of GPUs.
    """

    def amount(container: Obj, kind: str, i: int) -> int:
        res = container.get("resources") or {}
        requests, limits = res.get("requests") or {}, res.get("limits") or {}
        raw = requests.get(resource, limits.get(resource, 0))
        return gpu_quantity(raw, f"{kind}[{i}].resources[{resource!r}]")

    containers = pod_spec.get("containers") or ()
    inits = pod_spec.get("initContainers") or ()
    regular = sum(amount(c, "containers", i) for i, c in enumerate(containers))
    init = max((amount(c, "initContainers", i) for i, c in enumerate(inits)), default=0)
    return max(regular, init)


def tolerates(tolerations: Iterable[Obj], taint: Obj) -> bool:
    """Whether some toleration matches the taint (Kubernetes' rules: an empty key with
    ``Exists`` matches every taint; an empty effect matches every effect)."""
    for tol in tolerations:
        if tol.get("effect") and tol.get("effect") != taint.get("effect"):
            continue
        operator = tol.get("operator") or "Equal"
        if not tol.get("key"):
            if operator == "Exists":
                return True
            continue
        if tol.get("key") != taint.get("key"):
            continue
        if operator == "Exists" or (tol.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def parse_time(text: Any) -> datetime | None:
    """An RFC 3339 timestamp from the API as an aware UTC datetime; None when absent or
    malformed (a timestamp without an offset is taken as UTC, as the API server means it)."""
    if not isinstance(text, str) or not text:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def parse_epoch(text: Any) -> float | None:
    """:func:`parse_time` as seconds since the epoch (the autoscaler's clock)."""
    when = parse_time(text)
    return None if when is None else when.timestamp()


def now_rfc3339(now: datetime | None = None) -> str:
    """RFC 3339 UTC timestamp with seconds precision, the format Kubernetes uses."""
    return (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def precise_time(now: datetime) -> str:
    """RFC 3339 with microseconds: backoffs shorter than a second must not be rounded away."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
