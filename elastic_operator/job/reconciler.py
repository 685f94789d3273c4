"""Reads one ElasticJob and its pods, asks the planner, applies the plan: the I/O half of the
operator (the decisions are all in :mod:`elastic_operator.job.planner`).

Guarantees:

- **One reconcile per job at a time.** Requests for a job that is being reconciled only mark
  it dirty; it is reconciled once more afterwards. So a burst of pod events costs one or two
  reconciles, and two reconciles never race on the same status.
- **No reads per reconcile.** The job and its pods come from what the watches delivered
  (:mod:`elastic_operator.job.watch_cache`: a kopf index of worker pods, filled before any handler
  runs, the job bodies of watch events and our own writes, and expectations for writes the
  watch has not shown yet), so a reconcile costs no request unless it changes something, and
  its cost does not grow with the cluster. Writes stay idempotent (deterministic names: 409
  and 404 are success), which makes a restarted operator converge without duplicates.
- **Cheap repeats.** The status is patched only when it changed; watch events caused by the
  operator's own writes (recognised by resourceVersion) do not trigger a reconcile.
- **Never crash, never hot-loop.** An error is logged, counted in metrics and retried with
  capped exponential backoff; a bad object becomes a Failed/Invalid status via the planner.
- **Time-based decisions** (backoff, timeouts) are woken by a timer at the planner's
  ``requeue_after``; a periodic resync of non-terminal jobs covers anything missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from elastic_operator import labels
from elastic_operator.api.elasticjob import KIND, PLURAL, ElasticJobSpec, ElasticJobStatus
from elastic_operator.job import worker_manifests
from elastic_operator.job.etcd_auth import EtcdAuthAdmin, root_security
from elastic_operator.job.etcd_credentials import JobCredentials
from elastic_operator.job.metrics import Metrics
from elastic_operator.job.planner import (
    TERMINAL,
    CreatePod,
    CreateService,
    DeletePod,
    Event,
    JobView,
    MarkFailureRecorded,
    Plan,
    PlannerSettings,
    plan,
    utcnow,
)
from elastic_operator.job.rendezvous_records import (
    RendezvousView,
    RoundReader,
    check_view,
    view_limits,
)
from elastic_operator.job.watch_cache import CachedPod, Expectations, JobCache, indexed_pod, newer
from elastic_operator.kube_client import (
    MERGE_PATCH,
    ApiException,
    Kube,
    describe,
    is_status,
    post_event,
    status_message,
)
from launcher.etcd_client import PLAIN, EtcdSecurity

log = logging.getLogger("elastic_operator.job.reconciler")
COMPONENT = "elastic-operator"
Key = tuple[str, str]  # (namespace, name)
Obj = dict[str, Any]


@dataclass(frozen=True)
class ReconcilerSettings:
    """Operator-wide behaviour of reconciles (from ``elastic-operator run`` flags)."""

    planner: PlannerSettings = field(default_factory=PlannerSettings)
    default_rendezvous_endpoints: str = worker_manifests.DEFAULT_RENDEZVOUS_ENDPOINTS
    resync_seconds: float = 10.0
    read_rounds: bool = True
    error_backoff_cap_seconds: float = 30.0
    # TLS files for the operator's etcd connections; with the root password, every job on
    # the default etcd gets its own etcd user (elastic_operator.job.etcd_credentials).
    etcd_security: EtcdSecurity = PLAIN
    etcd_root_password: str | None = field(default=None, repr=False)
    namespaces: tuple[str, ...] = ()  # watched namespaces (empty: all); the sweep's scope


def _parse_status(raw: Any) -> ElasticJobStatus:
    try:
        return ElasticJobStatus.model_validate(raw or {})
    except ValidationError as exc:
        log.warning("unreadable status replaced by a fresh one: %s", exc.errors()[0]["msg"])
        return ElasticJobStatus()


@dataclass
class _Slot:
    running: bool = False
    dirty: bool = False
    errors: int = 0


class Reconciler:
    """Coalescing reconcile queue for ElasticJobs. Create and use it inside the event loop."""

    def __init__(self, kube: Kube, settings: ReconcilerSettings, metrics: Metrics) -> None:
        self.kube = kube
        self.settings = settings
        self.metrics = metrics
        # The operator reads every job's keys on the managed etcd: as root when auth is on.
        managed = {settings.default_rendezvous_endpoints: root_security(
            settings.etcd_security, settings.etcd_root_password)}
        self.rounds = RoundReader(self.wake, security=managed) if settings.read_rounds else None
        self.credentials = None if settings.etcd_root_password is None else JobCredentials(
            kube, EtcdAuthAdmin(settings.default_rendezvous_endpoints, settings.etcd_security,
                               settings.etcd_root_password), settings.namespaces)
        self._slots: dict[Key, _Slot] = {}
        self._timers: dict[Key, tuple[float, asyncio.TimerHandle]] = {}
        self._terminal: set[Key] = set()
        self._services: set[str] = set()
        self._own_versions: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.jobs = JobCache()
        self.expectations = Expectations()
        self._pods: Mapping[Key, Iterable[CachedPod]] = {}

    # ------------------------------------------------------------------ triggers

    def bind_pods(self, index: Mapping[Key, Iterable[CachedPod]]) -> None:
        """Use kopf's live index of worker pods (``handlers.worker_pods``)."""
        self._pods = index

    def observe_job(self, key: Key, body: Mapping[str, Any]) -> None:
        """Keep the newest body of a job from a watch event."""
        self.jobs.observe(key, body)

    def is_own_write(self, resource_version: str | None) -> bool:
        """Whether a watch event only echoes a write this operator made."""
        return bool(resource_version) and resource_version in self._own_versions

    def wake(self, key: Key) -> None:
        """Request a reconcile of ``key`` from synchronous code (timers, callbacks)."""
        task = asyncio.ensure_future(self.request(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def request(self, key: Key) -> None:
        """Reconcile ``key`` now, or once more after the reconcile in progress."""
        slot = self._slots.setdefault(key, _Slot())
        slot.dirty = True
        if slot.running:
            return
        slot.running = True
        try:
            while slot.dirty:
                slot.dirty = False
                await self._guarded(key, slot)
        finally:
            slot.running = False

    def forget(self, key: Key, uid: str | None = None) -> None:
        """The job is gone: drop its timers and bookkeeping (its pods go by owner GC)."""
        self._slots.pop(key, None)
        self._terminal.discard(key)
        self.jobs.forget(key)
        self.expectations.forget(key)
        timer = self._timers.pop(key, None)
        if timer:
            timer[1].cancel()
        if uid:
            self._services.discard(uid)
            if self.credentials is not None:
                self._spawn(self._remove_credentials(key, uid))
        if self.rounds:
            self.rounds.forget(key)
        self.metrics.job_phase(key, None)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _remove_credentials(self, key: Key, uid: str) -> None:
        assert self.credentials is not None
        try:
            await self.credentials.remove(*key, uid)
        except Exception as exc:  # the next sweep removes it
            log.warning("%s/%s: etcd user not removed yet (%s); the sweep will", *key, exc)

    async def sweep_credentials(self, from_cache: bool = True) -> None:
        """Remove etcd users whose job is gone (failures are logged; the next resync retries).

        ``from_cache``: the jobs that exist are the watch-fed cache's (no request); the first
        sweep after start-up lists them from the API instead, since the watch may not have
        delivered every job yet."""
        if self.credentials is None:
            return
        try:
            await self.credentials.sweep(self.jobs.bodies() if from_cache else None)
        except Exception as exc:
            log.warning("sweep of etcd users failed (%s); retrying at the next resync", exc)

    async def resync_forever(self) -> None:
        """Reconcile every known non-terminal job every ``resync_seconds``; sweep etcd users
        of deleted jobs at start-up and at each resync."""
        first = True
        while True:
            await self.sweep_credentials(from_cache=not first)
            first = False
            await asyncio.sleep(self.settings.resync_seconds)
            for key in list(self._slots):
                if key not in self._terminal:
                    self.wake(key)

    async def close(self) -> None:
        """Cancel timers and background reconciles."""
        for _, handle in self._timers.values():
            handle.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self.rounds:
            await self.rounds.close()
        if self.credentials:
            await self.credentials.close()

    def _schedule(self, key: Key, delay: float) -> None:
        when = time.monotonic() + delay
        current = self._timers.get(key)
        if current and current[0] <= when and not current[1].cancelled():
            return
        if current:
            current[1].cancel()
        loop = asyncio.get_running_loop()
        # A little slack so the planner, at wake-up, sees the deadline as passed.
        handle = loop.call_later(delay + 0.05, self._fire, key)
        self._timers[key] = (when, handle)

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.wake(key)

    # ------------------------------------------------------------------ one reconcile

    async def _guarded(self, key: Key, slot: _Slot) -> None:
        started = time.perf_counter()
        try:
            await self._reconcile(key)
            slot.errors = 0
        except Exception as exc:
            slot.errors += 1
            delay = min(self.settings.error_backoff_cap_seconds, 0.5 * 2 ** min(slot.errors, 8))
            self.metrics.reconcile_errors.inc()
            log.error("%s/%s: reconcile failed (%s); retrying in %.1fs", *key, describe(exc),
                      delay)
            self._schedule(key, delay)
        finally:
            self.metrics.reconcile_seconds.observe(time.perf_counter() - started)

    async def _reconcile(self, key: Key) -> None:
        namespace, name = key
        body = self.jobs.get(key)
        if body is None:
            return  # not seen by the watch (yet), or deleted: nothing to decide
        meta = body.get("metadata") or {}
        uid = str(meta.get("uid", ""))
        if meta.get("deletionTimestamp"):
            return  # going away: owner GC removes the workers; nothing to decide
        unseen = self.expectations.expired_unseen
        cached = self.expectations.merge(key, self._pods.get(key, ()), time.monotonic())
        if self.expectations.expired_unseen > unseen:
            log.warning("%s/%s: the pod watch has not shown this operator's writes of %.0f s "
                        "ago; deciding on what it shows", namespace, name,
                        self.expectations.ttl)
        # Pods of an earlier job with the same name still wait for GC: not ours to manage,
        # but their names block ours, so they count as terminating.
        pods = [p.view if p.owner_uid == uid else dataclasses.replace(p.view, terminating=True)
                for p in cached]
        old_status = _parse_status(body.get("status"))
        job = JobView(
            namespace=namespace,
            name=name,
            uid=uid,
            generation=int(meta.get("generation") or 1),
            spec=body.get("spec") or {},
            status=old_status,
        )
        seen = RendezvousView()
        endpoints = self._endpoints(job)
        if self.rounds is not None and endpoints:
            seen = self.rounds.latest(key, endpoints, worker_manifests.rdzv_id(*key, uid))
            seen = check_view(seen, name, *view_limits(job.spec), time.time())
        result = plan(
            job,
            pods,
            utcnow(),
            self.settings.planner,
            service_present=uid in self._services,
            observed_round=seen.round,
            reported_failures=seen.failures,
            completion=seen.completion,
            resizes=seen.resizes,
        )
        await self._apply(job, body, old_status, result, cached)
        if result.status.phase in TERMINAL:
            self._terminal.add(key)
        else:
            self._terminal.discard(key)
        self.metrics.job_phase(key, result.status.phase.value)
        if result.requeue_after is not None:
            self._schedule(key, result.requeue_after)

    def _endpoints(self, job: JobView) -> str:
        configured = (job.spec.get("rendezvous") or {}).get("endpoints") or []
        if configured and all(isinstance(e, str) for e in configured):
            return ",".join(configured)
        return self.settings.default_rendezvous_endpoints

    async def _apply(
        self, job: JobView, body: Obj, old_status: ElasticJobStatus, result: Plan,
        cached: list[CachedPod],
    ) -> None:
        ns, name = job.namespace, job.name
        key = (ns, name)
        pods_by_name = {p.name: p for p in cached}
        kube = self.kube
        for mark in result.of(MarkFailureRecorded):
            patch = {"metadata": {"annotations": {labels.FAILURE_RECORDED_AT: mark.at}}}
            with contextlib.suppress(_Missing):
                marked = await self._write(kube.call(
                    kube.core.patch_namespaced_pod, mark.name, ns, patch,
                    _content_type=MERGE_PATCH))
                self.expectations.wrote(key, indexed_pod(marked), time.monotonic())
        if result.status.wire() != old_status.wire():
            written = await kube.call(
                kube.custom.patch_namespaced_custom_object_status, labels.GROUP,
                labels.VERSION, ns, PLURAL, name, {"status": result.status.wire()},
                _content_type=MERGE_PATCH)
            self.jobs.observe(key, written)
            # Its watch event is an echo only if nobody changed the spec meanwhile; kopf may
            # merge a user's edit and this write into one event, which must not be skipped.
            if (written.get("metadata") or {}).get("generation") == job.generation:
                self._remember(written)
            restarted = result.status.restarts - old_status.restarts
            if restarted > 0:
                self.metrics.restarts.inc(restarted)
            if result.status.phase != old_status.phase:
                log.info("%s/%s: phase %s -> %s", ns, name, old_status.phase.value,
                         result.status.phase.value)
        for delete in result.of(DeletePod):
            log.info("%s/%s: deleting pod %s (%s)", ns, name, delete.name, delete.reason)
            with contextlib.suppress(_Missing):
                await self._write(kube.call(kube.core.delete_namespaced_pod, delete.name, ns,
                                            propagation_policy="Background"))
                self.metrics.pods_deleted.labels(reason=delete.reason).inc()
            known = pods_by_name.get(delete.name)
            if known is not None:
                indexed = any(p.name == delete.name and newer(p.version, known.version)
                              for p in self._pods.get(key, ()))
                self.expectations.deleted(key, known, time.monotonic(), indexed)
        if result.of(CreateService):
            service = worker_manifests.headless_service(ns, name, job.uid)
            with contextlib.suppress(_Exists):
                await self._write(kube.call(kube.core.create_namespaced_service, ns, service))
            self._services.add(job.uid)
        creates = result.of(CreatePod)
        if creates:
            spec = ElasticJobSpec.model_validate(job.spec)  # valid: the planner checked it
            for create in creates:
                await self._create_pod(job, body, spec, create)
        for event in result.of(Event):
            log.info("%s/%s: %s: %s", ns, name, event.reason, event.message)
            await self.post_event(body, event)

    async def _create_pod(
        self, job: JobView, body: Obj, spec: ElasticJobSpec, create: CreatePod
    ) -> None:
        credentials = spec.rendezvous.credentialsSecret
        if self.credentials is not None and not spec.rendezvous.endpoints:
            try:
                credentials = await self.credentials.ensure(job.namespace, job.name, job.uid)
            except Exception as exc:
                message = f"cannot provision the job's etcd credentials: {exc}"[:1024]
                await self.post_event(body, Event("Warning", "RendezvousCredentials", message))
                raise
        manifest = worker_manifests.worker_pod(
            job.namespace, job.name, job.uid, create.index, spec,
            self.settings.default_rendezvous_endpoints, credentials,
        )
        log.info("%s/%s: creating pod %s (%s)", job.namespace, job.name,
                 manifest["metadata"]["name"], create.reason)
        try:
            created = await self._write(self.kube.call(
                self.kube.core.create_namespaced_pod, job.namespace, manifest))
            self.expectations.wrote((job.namespace, job.name), indexed_pod(created),
                                    time.monotonic())
            self.metrics.pods_created.inc()
        except _Exists:
            return  # created before a restart, or the old one is still terminating
        except ApiException as exc:
            # e.g. a template the API server refuses, or a quota: say so on the job.
            message = f"cannot create {manifest['metadata']['name']}: {status_message(exc)}"
            await self.post_event(body, Event("Warning", "FailedCreatePod", message))
            raise

    async def _write(self, call: Any) -> Obj:
        """Await a write; map 404/409 to the idempotence exceptions; remember its version."""
        try:
            result: Obj = await call
        except ApiException as exc:
            if is_status(exc, 404):
                raise _Missing from exc
            if is_status(exc, 409, "AlreadyExists"):
                raise _Exists from exc
            raise
        self._remember(result)
        return result

    def _remember(self, obj: Obj) -> None:
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if version:
            if len(self._own_versions) > 50_000:
                self._own_versions.clear()  # only an optimisation: forgetting costs a no-op
            self._own_versions.add(str(version))

    async def post_event(self, body: Obj, event: Event) -> None:
        """Record a core/v1 Event on the job (failures are logged, never raised)."""
        await post_event(self.kube, {"apiVersion": labels.API_VERSION, "kind": KIND,
                                     "metadata": body.get("metadata") or {}},
                         event.reason, event.message, component=COMPONENT,
                         warning=event.type == "Warning")


class _Missing(Exception):
    """404 on a delete or patch: the object is already gone."""


class _Exists(Exception):
    """409 AlreadyExists on a create: the object is already there."""
