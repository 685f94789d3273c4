"""kopf handlers of the ElasticJob operator: they only route watch events to the reconciler.

- ElasticJob events (create, update, resume at startup, the scale subresource) keep the
  job's newest body in the reconciler's cache and reconcile that job; a DELETED event forgets
  it (its workers go by owner-reference GC).
- Worker pods (labelled ``elastic.dev/job-name``) are indexed by kopf (:func:`worker_pods`),
  which fills the index from its initial listing before calling any handler; their events
  reconcile the owning job, which reads its pods from that index.
- A startup handler builds the shared runtime into kopf's ``memo``: ``memo.api``
  (:class:`elastic_operator.k8s.Api`), ``memo.metrics`` and ``memo.reconciler``; other
  handler modules (autoscaler, reclaim) may use ``memo.api`` and ``memo.config`` too.

Only ``kopf.on.event`` is used for watched objects: such handlers keep no progress in the
object (no kopf annotations, no finalizers), so the operator's only writes to a job are its
status, and deleting a job never waits on the operator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import kopf

from elastic_operator import k8s, labels
from elastic_operator.api.elasticjob import PLURAL
from elastic_operator.job.metrics import Metrics
from elastic_operator.job.reconciler import Key, Reconciler
from elastic_operator.job.watch_cache import CachedPod, indexed_pod

log = logging.getLogger("elastic_operator.job.handlers")


@kopf.on.startup()
async def start(memo: kopf.Memo, **_: Any) -> None:
    """Log in, start metrics and the reconciler with its periodic resync."""
    config = memo.config
    memo.api = k8s.Api(k8s.login(config.kubeconfig),
                       relogin=lambda: k8s.login(config.kubeconfig))
    memo.metrics = Metrics()
    memo.metrics.serve(config.metrics_port)
    memo.reconciler = Reconciler(memo.api, config.reconciler, memo.metrics)
    memo.resync = asyncio.create_task(memo.reconciler.resync_forever())


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    """Stop the resync and close the HTTP session."""
    if getattr(memo, "resync", None) is not None:
        memo.resync.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await memo.resync
    if getattr(memo, "reconciler", None) is not None:
        await memo.reconciler.close()
    if getattr(memo, "api", None) is not None:
        await memo.api.close()


@kopf.index("", "v1", "pods", labels={labels.JOB_NAME: kopf.PRESENT})
def worker_pods(body: kopf.Body, namespace: str, **_: Any) -> dict[Key, CachedPod]:
    """Worker pods by (namespace, job name), as the reconciler reads them."""
    return {(namespace, body.metadata.labels[labels.JOB_NAME]): indexed_pod(body)}


@kopf.on.event(labels.GROUP, labels.VERSION, PLURAL)
async def job_event(
    event: dict[str, Any], body: kopf.Body, namespace: str, name: str, memo: kopf.Memo,
    worker_pods: kopf.Index[Key, CachedPod], **_: Any,
) -> None:
    """Reconcile a job on every change that is not the echo of our own status write."""
    reconciler: Reconciler = memo.reconciler
    reconciler.bind_pods(worker_pods)
    if event.get("type") == "DELETED":
        reconciler.forget((namespace, name), body.metadata.uid)
        return
    reconciler.observe_job((namespace, name), body)
    if reconciler.is_own_write(body.metadata.get("resourceVersion")):
        return
    await reconciler.request((namespace, name))


@kopf.on.event("", "v1", "pods", labels={labels.JOB_NAME: kopf.PRESENT})
async def pod_event(
    event: dict[str, Any], body: kopf.Body, namespace: str, memo: kopf.Memo,
    worker_pods: kopf.Index[Key, CachedPod], **_: Any,
) -> None:
    """Reconcile the job a worker pod belongs to (the pod's own writes excepted)."""
    reconciler: Reconciler = memo.reconciler
    reconciler.bind_pods(worker_pods)
    if event.get("type") != "DELETED" and reconciler.is_own_write(
        body.metadata.get("resourceVersion")
    ):
        return
    await reconciler.request((namespace, body.metadata.labels[labels.JOB_NAME]))
