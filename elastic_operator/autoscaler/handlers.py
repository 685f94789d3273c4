"""kopf wiring of the autoscaler: watch events in, ``spec.replicas`` writes and events out.

- Node and Pod watch events feed a :class:`~elastic_operator.autoscaler.capacity.CapacityCache`
  and ElasticJob events a job cache; nothing is ever re-listed for a decision.
- A decision loop runs the pure :func:`~elastic_operator.autoscaler.policy.decide` after a
  relevant change (debounced, so a burst of pod events costs one decision), when the earliest
  open growth window ends (``Decision.wake_at``, so a job grows on time) and at least every
  ``interval`` seconds, because timeouts expire with time alone.
  Each decision also gets the least capacity seen since the previous one (kopf hands every
  watch event over, in order), so GPUs taken and freed between two decisions still reset the
  growth window.
- A resize is written through the job's ``scale`` subresource (what ``kubectl scale`` and an
  HPA use) with the cached ``resourceVersion`` as a precondition: a job changed meanwhile
  answers 409 and is decided again from fresh data, never overwritten. Jobs without
  ``spec.autoscale.enabled`` are never written (the policy gives them no target).
- Every resize is an Event on the job (reason ``AutoscaleUp``, ``AutoscaleDownForPriority`` or
  ``AutoscaleGiveBack``, message e.g. ``grow 6->8: 2 GPUs free on node-3 for 60s``), a log line,
  and counts in ``elastic_autoscaler_scale_ups_total`` / ``elastic_autoscaler_scale_downs_total
  {reason}``; ``elastic_autoscaler_free_gpus`` is the total free GPUs last seen.

Settings come from the environment (the operator's Deployment sets them), so the operator's
command line stays the operator's: ``ELASTIC_AUTOSCALER_GPU_RESOURCE`` (default
``nvidia.com/gpu``), ``ELASTIC_AUTOSCALER_INTERVAL`` (seconds, default 5),
``ELASTIC_AUTOSCALER_PREEMPT_AFTER`` (seconds a pod waits before others shrink for it,
default 5), ``ELASTIC_AUTOSCALER_PROTECTED_PRIORITY`` (pods with at least this
``spec.priority`` are protected; default 1000000, empty: only the label).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import kopf
from prometheus_client import CollectorRegistry, Counter, Gauge

from elastic_operator import labels
from elastic_operator.api.elasticjob import PLURAL
from elastic_operator.autoscaler import views
from elastic_operator.autoscaler.capacity import CapacityCache, CapacitySnapshot
from elastic_operator.autoscaler.policy import (
    Decision,
    JobMemory,
    JobState,
    Kind,
    PolicySettings,
    Target,
    Worker,
    decide,
)
from elastic_operator.kube_client import (
    MERGE_PATCH,
    ApiException,
    Kube,
    describe,
    is_status,
    post_event,
    reason,
)

log = logging.getLogger("elastic_operator.autoscaler")
COMPONENT = "elastic-operator-autoscaler"

EVENT_REASONS: Mapping[Kind, str] = {
    Kind.GROW: "AutoscaleUp",
    Kind.PREEMPT: "AutoscaleDownForPriority",
    Kind.GIVE_BACK: "AutoscaleGiveBack",
}


# How far past a growth window's end the loop wakes to decide (the window has ended by then).
WINDOW_SLACK_S = 0.01


@dataclass(frozen=True)
class AutoscalerSettings:
    """Operator-wide autoscaler knobs (see the module docstring for the variables)."""

    resource: str = labels.DEFAULT_GPU_RESOURCE
    interval_s: float = 5.0
    debounce_s: float = 0.3
    preempt_after_s: float = 5.0
    protected_priority: int | None = 1_000_000

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> AutoscalerSettings:
        """Read the ``ELASTIC_AUTOSCALER_*`` variables; ValueError names a bad one."""

        def number(name: str, default: float) -> float:
            raw = env.get(name, "")
            if not raw:
                return default
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not a number of seconds") from None
            if value < 0:
                raise ValueError(f"{name}={raw!r} is negative; use 0 or more seconds")
            return value

        protected = env.get("ELASTIC_AUTOSCALER_PROTECTED_PRIORITY", "1000000").strip()
        try:
            protected_priority = int(protected) if protected else None
        except ValueError:
            raise ValueError(f"ELASTIC_AUTOSCALER_PROTECTED_PRIORITY={protected!r} is not an "
                             "integer; give a PriorityClass value or leave it empty") from None
        interval = number("ELASTIC_AUTOSCALER_INTERVAL", cls.interval_s)
        return cls(
            resource=env.get("ELASTIC_AUTOSCALER_GPU_RESOURCE") or cls.resource,
            interval_s=max(interval, 0.1),
            preempt_after_s=number("ELASTIC_AUTOSCALER_PREEMPT_AFTER", cls.preempt_after_s),
            protected_priority=protected_priority,
        )


class AutoscalerMetrics:
    """The autoscaler's Prometheus metrics, in the operator's registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.scale_ups = Counter("elastic_autoscaler_scale_ups", "Jobs grown by the autoscaler",
                                 registry=registry)
        self.scale_downs = Counter("elastic_autoscaler_scale_downs",
                                   "Jobs shrunk by the autoscaler", ["reason"],
                                   registry=registry)
        self.free_gpus = Gauge("elastic_autoscaler_free_gpus",
                               "Free GPUs on schedulable nodes at the last decision",
                               registry=registry)
        self.decisions = Counter("elastic_autoscaler_decisions",
                                 "Decision rounds run", registry=registry)


class Autoscaler:
    """The caches, the policy's memory and the decision loop. Create inside the event loop."""

    def __init__(self, settings: AutoscalerSettings, metrics: AutoscalerMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.capacity = CapacityCache(settings.resource)
        self.jobs: dict[str, dict[str, Any]] = {}
        # Each job parsed once per change (None: skipped), not once per decision; likewise
        # its workers, dropped when one of its pods changes, and its policy input, dropped
        # with either (or rebuilt when its eligible nodes changed).
        self.views: dict[str, views.JobView | None] = {}
        self.workers: dict[str, tuple[Worker, ...]] = {}
        self.states: dict[str, JobState] = {}
        # views.worker_of of each job's pods, kept per event: a decision only sorts them.
        self.pod_workers: dict[str, dict[str, Worker | None]] = {}
        self.memory: dict[str, JobMemory] = {}
        self._wake = asyncio.Event()

    # -- inputs ------------------------------------------------------------------------------
    def on_node(self, event_type: str | None, node: Mapping[str, Any]) -> None:
        self.capacity.apply_node(event_type or "ADDED", node)
        self._wake.set()

    def on_pod(self, event_type: str | None, pod: Mapping[str, Any]) -> None:
        key = f"{(pod.get('metadata') or {}).get('namespace')}/" \
              f"{(pod.get('metadata') or {}).get('name')}"
        old = self.capacity.pods.get(key)
        self.capacity.apply_pod(event_type or "ADDED", pod)
        new = self.capacity.pods.get(key)
        for info in (old, new):
            if info is not None and info.job is not None:
                self.workers.pop(info.job, None)
                self.states.pop(info.job, None)
        if old is not None and old.job is not None:
            group = self.pod_workers.get(old.job, {})
            group.pop(key, None)
            if not group:
                self.pod_workers.pop(old.job, None)
        if new is not None and new.job is not None:
            self.pod_workers.setdefault(new.job, {})[key] = views.worker_of(new)
        if old is not None or new is not None:  # a CPU-only foreign pod changes nothing
            self._wake.set()

    def on_job(self, event_type: str | None, job: Mapping[str, Any]) -> None:
        key = views.job_key(job)
        self.states.pop(key, None)
        if event_type == "DELETED":
            self.jobs.pop(key, None)
            self.views.pop(key, None)
            self.workers.pop(key, None)
            self.memory.pop(key, None)
        else:
            self.jobs[key] = copy.deepcopy(dict(job))  # apply() edits it; kopf owns the event
            self.views[key] = views.job_view(self.jobs[key], self.settings.resource)
        self._wake.set()

    # -- decision ----------------------------------------------------------------------------
    def decide(self, now: float) -> Decision:
        """One decision from the caches (pure apart from reading them)."""
        snapshot = self.capacity.snapshot()
        floor = snapshot.lowered(self.capacity.take_floor())
        self.metrics.free_gpus.set(snapshot.total_free)
        states = [self._state(key, view, snapshot) for key, view in self.views.items()
                  if view is not None]
        demands = views.protected_demands(self.capacity.waiting.values(), snapshot,
                                          self.settings.protected_priority)
        decision = decide(states, demands, views.policy_capacity(snapshot), self.memory, now,
                          PolicySettings(preempt_after_s=self.settings.preempt_after_s),
                          floor=views.policy_capacity(floor))
        self.memory = decision.memory
        self.metrics.decisions.inc()
        return decision

    def _state(self, key: str, view: views.JobView, snapshot: CapacitySnapshot) -> JobState:
        state = self.states.get(key)
        # The snapshot hands out the same set until a node changes (CapacityCache).
        if state is None or state.eligible is not snapshot.eligible(view.pod_spec,
                                                                    view.placement):
            state = views.job_state(view, self._workers(key), snapshot)
            self.states[key] = state
        return state

    def _workers(self, key: str) -> tuple[Worker, ...]:
        workers = self.workers.get(key)
        if workers is None:
            workers = views.live_workers(self.pod_workers.get(key, {}).values())
            self.workers[key] = workers
        return workers

    async def apply(self, kube: Kube, key: str, target: Target) -> bool:
        """Write one resize; False when the job changed meanwhile or is gone."""
        job = self.jobs.get(key)
        if job is None:
            return False
        meta = job.get("metadata") or {}
        namespace, name = meta.get("namespace"), meta.get("name")
        scale = {"metadata": {"resourceVersion": meta.get("resourceVersion")},
                 "spec": {"replicas": target.replicas}}
        try:
            written = await kube.call(
                kube.custom.patch_namespaced_custom_object_scale, labels.GROUP, labels.VERSION,
                namespace, PLURAL, name, scale, _content_type=MERGE_PATCH)
        except ApiException as exc:
            if is_status(exc, 404) or is_status(exc, 409):
                # Most often a status write of the operator raced ours: the memory (growth
                # streak) stays valid, and the next round decides from the fresh object.
                log.info("%s: resize %d->%d skipped (%s); deciding again", key,
                         target.previous, target.replicas, reason(exc) or exc.status)
                self._wake.set()
                return False
            raise
        # The watch event will say the same; until then, decide from what was written.
        job.setdefault("spec", {})["replicas"] = target.replicas
        new_version = (written.get("metadata") or {}).get("resourceVersion")
        if new_version:
            meta["resourceVersion"] = new_version
        self.views[key] = views.job_view(job, self.settings.resource)
        self.states.pop(key, None)
        if target.kind is Kind.GROW:
            self.metrics.scale_ups.inc()
        else:
            self.metrics.scale_downs.labels(reason=target.kind.value).inc()
        log.info("%s: %s", key, target.reason)
        await post_event(kube, job, EVENT_REASONS[target.kind], target.reason,
                         component=COMPONENT)
        return True

    async def run_forever(self, memo: kopf.Memo) -> None:
        """Decide after each (debounced) change, when a growth window ends, and at least every
        ``interval``; never raises."""
        wake_at: float | None = None
        while True:
            timeout = self.settings.interval_s
            if wake_at is not None:  # just past the window's end: it has ended then
                timeout = min(timeout, max(wake_at - time.time(), 0.0) + WINDOW_SLACK_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            if self._wake.is_set():
                # A change: let the rest of its burst arrive, so the burst costs one decision.
                # A timed wake (a window's end, the period) has no burst to wait for.
                await asyncio.sleep(self.settings.debounce_s)
            self._wake.clear()
            wake_at = None
            try:
                decision = self.decide(time.time())
                wake_at = decision.wake_at
                for key, target in decision.targets.items():
                    await self.apply(memo.kube, key, target)
            except (ApiException, aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.warning("autoscaler: decision not applied: %s; retrying", describe(exc))
                self._wake.set()
                await asyncio.sleep(self.settings.interval_s)
            except Exception:
                # A bug must not stop autoscaling for good: log it loudly and keep deciding.
                log.exception("autoscaler: decision failed; retrying")
                await asyncio.sleep(self.settings.interval_s)


@kopf.on.startup()
async def start_autoscaler(memo: kopf.Memo, **_: Any) -> None:
    """Start the decision loop once the operator's runtime (``memo.kube``) is up."""
    for needed in ("kube", "metrics", "reconciler"):
        if getattr(memo, needed, None) is None:
            raise kopf.TemporaryError(f"memo.{needed} is not ready yet", delay=0.5)
    settings = AutoscalerSettings.from_env()
    memo.autoscaler = Autoscaler(settings, AutoscalerMetrics(memo.metrics.registry))
    memo.autoscaler_task = asyncio.create_task(memo.autoscaler.run_forever(memo))
    log.info("autoscaler: started (GPU resource %s, interval %gs, protected priority %s)",
             settings.resource, settings.interval_s, settings.protected_priority)


@kopf.on.cleanup()
async def stop_autoscaler(memo: kopf.Memo, **_: Any) -> None:
    """Stop the decision loop."""
    task = getattr(memo, "autoscaler_task", None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@kopf.on.event("", "v1", "nodes")
async def node_event(event: dict[str, Any], memo: kopf.Memo, **_: Any) -> None:
    """Keep the node cache current."""
    memo.autoscaler.on_node(event.get("type"), event["object"])


@kopf.on.event("", "v1", "pods")
async def pod_event(event: dict[str, Any], memo: kopf.Memo, **_: Any) -> None:
    """Keep the pod usage current (CPU-only foreign pods are ignored)."""
    memo.autoscaler.on_pod(event.get("type"), event["object"])


@kopf.on.event(labels.GROUP, labels.VERSION, PLURAL)
async def job_event(event: dict[str, Any], memo: kopf.Memo, **_: Any) -> None:
    """Keep the job cache current."""
    memo.autoscaler.on_job(event.get("type"), event["object"])
