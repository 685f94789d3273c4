"""The local cluster's Deployment controller: keeps ``spec.replicas`` pods of the template
running and reports the status ``kubectl rollout status`` reads.

A minimal kube-controller-manager for ``apps/v1`` Deployments, without ReplicaSets: the
Deployment owns its pods directly (ownerReference, ``controller: true``), named
``<deployment>-<template hash>-<5 characters>`` and labelled ``pod-template-hash`` as a
ReplicaSet's pods are. What a client can rely on, as on a real cluster:

- a deleted or finished pod is replaced; extra pods are deleted (not-ready first, then the
  newest); a template change replaces the pods: ``Recreate`` deletes the old ones and starts
  the new ones once the old are gone, ``RollingUpdate`` starts the new ones and deletes an old
  one for each new one that is Ready;
- ``status``: ``observedGeneration``, ``replicas`` (pods not being deleted and not finished),
  ``updatedReplicas`` (those of the current template), ``readyReplicas``,
  ``availableReplicas`` (Ready; ``minReadySeconds`` is not waited for),
  ``unavailableReplicas``, and the conditions ``Available`` (MinimumReplicasAvailable /
  MinimumReplicasUnavailable) and ``Progressing`` (NewReplicaSetAvailable once complete, else
  ReplicaSetUpdated); zero counts are omitted, as kube-apiserver's JSON omits them.

Not emulated (documented differences): ReplicaSet objects and rollout history (``kubectl
rollout undo``), ``maxSurge``/``maxUnavailable`` arithmetic, ``paused``, the progress deadline
(``ProgressDeadlineExceeded`` never appears).
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

from kube_emulator.client import (
    ApiClient,
    ApiError,
    cancel_all,
    informer,
    resource_path,
    wait_event,
)
from kube_emulator.times import now_rfc3339

log = logging.getLogger(__name__)
Obj = dict[str, Any]
HASH_LABEL = "pod-template-hash"
_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # Kubernetes' name suffix alphabet
RESYNC_SECONDS = 5.0


def template_hash(template: Obj) -> str:
    """A stable 10-character hash of a pod template (the ``pod-template-hash`` label)."""
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).digest()
    return "".join(_ALPHABET[b % len(_ALPHABET)] for b in digest[:10])


@dataclass
class DeploymentPlan:
    """What to do now: how many pods of the current template to create, which pods to
    delete, and the status to report."""

    create: int = 0
    delete: list[str] = field(default_factory=list)
    status: Obj = field(default_factory=dict)


def _ready(pod: Obj) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or ())


def _live(pod: Obj) -> bool:
    return not pod["metadata"].get("deletionTimestamp") and \
        (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


def plan_deployment(deployment: Obj, pods: list[Obj], now: str) -> DeploymentPlan:
    """The plan for ``deployment`` given the pods it owns (any state)."""
    spec = deployment.get("spec") or {}
    replicas = int(spec.get("replicas", 1))
    current = template_hash(spec.get("template") or {})
    recreate = (spec.get("strategy") or {}).get("type") == "Recreate"
    live = [p for p in pods if _live(p)]
    new = [p for p in live if p["metadata"].get("labels", {}).get(HASH_LABEL) == current]
    old = [p for p in live if p not in new]
    new_ready = [p for p in new if _ready(p)]
    plan = DeploymentPlan()
    if recreate and old:
        plan.delete = [p["metadata"]["name"] for p in old]
    elif recreate and any(p["metadata"].get("labels", {}).get(HASH_LABEL) != current
                          and p["metadata"].get("deletionTimestamp") for p in pods):
        pass  # old pods still terminating: Recreate starts the new ones after they are gone
    else:
        plan.create = max(0, replicas - len(new))
        # Not-ready first, then the newest, as a ReplicaSet picks pods to delete.
        extra = sorted(new, key=lambda p: (_ready(p), p["metadata"].get("creationTimestamp",
                                                                           "")))
        plan.delete = [p["metadata"]["name"] for p in extra[:max(0, len(new) - replicas)]]
        retire = min(len(old), max(0, len(old) + len(new_ready) - replicas))
        plan.delete += [p["metadata"]["name"] for p in old[:retire]]
    plan.status = _status(deployment, replicas, live, new, now, current)
    return plan


def _status(deployment: Obj, replicas: int, live: list[Obj], new: list[Obj], now: str,
            current: str) -> Obj:
    name = deployment["metadata"]["name"]
    available = sum(1 for p in live if _ready(p))
    counts = {"replicas": len(live), "updatedReplicas": len(new),
              "readyReplicas": available, "availableReplicas": available,
              "unavailableReplicas": max(0, replicas - available)}
    complete = len(new) == replicas == len(live) and available >= replicas
    wanted = {
        "Available": ("True", "MinimumReplicasAvailable", "Deployment has minimum "
                      "availability.") if available >= replicas else
                     ("False", "MinimumReplicasUnavailable", "Deployment does not have "
                      "minimum availability."),
        "Progressing": ("True", "NewReplicaSetAvailable", f'ReplicaSet "{name}-{current}" '
                        "has successfully progressed.") if complete else
                       ("True", "ReplicaSetUpdated", f'ReplicaSet "{name}-{current}" is '
                        "progressing."),
    }
    old = {c.get("type"): c for c in (deployment.get("status") or {}).get("conditions") or ()}
    conditions = []
    for kind, (status, reason, message) in wanted.items():
        before = old.get(kind) or {}
        same = before.get("status") == status
        conditions.append({"type": kind, "status": status, "reason": reason,
                           "message": message, "lastUpdateTime": now if not same or
                           before.get("reason") != reason else before.get("lastUpdateTime",
                                                                          now),
                           "lastTransitionTime": before.get("lastTransitionTime", now)
                           if same else now})
    return {"observedGeneration": int(deployment["metadata"].get("generation", 1)),
            **{k: v for k, v in counts.items() if v}, "conditions": conditions}


def pod_for(deployment: Obj, current: str) -> Obj:
    """A new pod of the deployment's template, owned by it."""
    meta = deployment["metadata"]
    template = copy.deepcopy((deployment.get("spec") or {}).get("template") or {})
    tmeta = template.get("metadata") or {}
    suffix = "".join(secrets.choice(_ALPHABET) for _ in range(5))
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": f"{meta['name']}-{current}-{suffix}", "namespace": meta["namespace"],
            "labels": {**(tmeta.get("labels") or {}), HASH_LABEL: current},
            "annotations": dict(tmeta.get("annotations") or {}),
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                 "name": meta["name"], "uid": meta["uid"], "controller": True,
                                 "blockOwnerDeletion": True}]},
        "spec": template.get("spec") or {},
    }


def _selector(deployment: Obj) -> str:
    labels = ((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


class DeploymentController:
    """Reconciles every Deployment over HTTP: on each change of a Deployment or of a pod a
    Deployment owns, and every :data:`RESYNC_SECONDS` as a safety net."""

    def __init__(self, client: ApiClient) -> None:
        self.client = client
        self._dirty: set[tuple[str, str]] = set()
        self._known: set[tuple[str, str]] = set()
        self._wake = asyncio.Event()

    async def run(self, ready: asyncio.Event | None = None) -> None:
        """Run until cancelled; ``ready`` is set once Deployments were first listed."""
        tasks = [asyncio.create_task(informer(self.client, "/apis/apps/v1/deployments",
                                              self._on_deployment, ready=ready)),
                 asyncio.create_task(informer(self.client, "/api/v1/pods", self._on_pod))]
        try:
            while True:
                if not await wait_event(self._wake, RESYNC_SECONDS):
                    self._dirty |= self._known
                self._wake.clear()
                keys, self._dirty = self._dirty, set()
                for namespace, name in sorted(keys):
                    try:
                        await self.reconcile(namespace, name)
                    except ApiError as exc:
                        log.warning("deployment %s/%s: %s; retrying", namespace, name, exc)
                        self._mark(namespace, name)
        finally:
            await cancel_all(tasks)

    def _mark(self, namespace: str, name: str) -> None:
        self._dirty.add((namespace, name))
        self._wake.set()

    def _on_deployment(self, kind: str, deployment: Obj) -> None:
        key = (deployment["metadata"]["namespace"], deployment["metadata"]["name"])
        if kind == "DELETED":
            self._known.discard(key)
        else:
            self._known.add(key)
            self._mark(*key)

    def _on_pod(self, kind: str, pod: Obj) -> None:
        for ref in pod["metadata"].get("ownerReferences") or ():
            if ref.get("kind") == "Deployment" and ref.get("controller"):
                self._mark(pod["metadata"]["namespace"], str(ref.get("name")))

    async def reconcile(self, namespace: str, name: str) -> None:
        """One pass for one Deployment: read it and its pods, plan, act, report."""
        try:
            deployment = await self.client.get(
                resource_path("deployments", namespace, name, group="apps", version="v1"))
        except ApiError as exc:
            if exc.code == 404:
                return
            raise
        uid = deployment["metadata"]["uid"]
        listing = await self.client.get(resource_path("pods", namespace),
                                        labelSelector=_selector(deployment))
        pods = [p for p in listing.get("items") or ()
                if any(r.get("uid") == uid and r.get("controller")
                       for r in p["metadata"].get("ownerReferences") or ())]
        plan = plan_deployment(deployment, pods, now_rfc3339())
        current = template_hash((deployment.get("spec") or {}).get("template") or {})
        for _ in range(plan.create):
            pod = await self.client.create(resource_path("pods", namespace),
                                           pod_for(deployment, current))
            log.info("deployment %s/%s: created pod %s", namespace, name,
                     pod["metadata"]["name"])
        for pod_name in plan.delete:
            try:
                await self.client.delete(resource_path("pods", namespace, pod_name))
            except ApiError as exc:
                if exc.code != 404:
                    raise
            log.info("deployment %s/%s: deleted pod %s", namespace, name, pod_name)
        if plan.create or plan.delete:
            self._mark(namespace, name)  # report the pods just created or deleted
        before = deployment.get("status") or {}
        if plan.status != before:
            # A merge patch removes a field by setting it to null: a count now zero goes.
            gone = {k: None for k in before if k not in plan.status}
            await self.client.patch(resource_path("deployments", namespace, name, "status",
                                                  group="apps", version="v1"),
                                    {"status": {**plan.status, **gone}})
