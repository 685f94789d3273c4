"""What the reconciler knows of jobs and their worker pods without asking the API server.

A reconcile used to GET the job and LIST its pods, so every pod event, timer and periodic
resync of every job cost two requests and a namespace-wide scan on the API server: the cost of
an event grew with the size of the cluster. Now the operator reads from what its watches
already deliver (the way controller-runtime's informer cache and the Kubernetes Job controller
do):

- **Pods** come from a kopf index over the worker pod watch (:func:`indexed_pod` makes each
  entry). kopf fills an index from its initial listing before it calls any handler, so a
  freshly started operator never decides on a partial view.
- **Jobs** come from the job watch events and from the operator's own status writes
  (:class:`JobCache`), newest ``resourceVersion`` winning.
- **Expectations** (:class:`Expectations`) bridge the gap between a write and its watch event:
  a pod the operator just created, patched or deleted is seen as written until the watch has
  caught up (or, should an event be lost, until ``ttl`` passes and the watch's word counts
  again). So a reconcile never creates a pod twice, never forgets one it just deleted, and
  never counts one failure twice because the ``failure-recorded-at`` mark it wrote was not
  yet in the index.

``resourceVersion`` is compared as an integer where it is one (etcd's revision, what every
kube-apiserver serves); where it is not, the newest arrival wins.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from elastic_operator.api.elasticjob import KIND
from elastic_operator.job.observed import PodView, observe_pod

Key = tuple[str, str]  # (namespace, job name)
Obj = dict[str, Any]


def version_of(obj: Mapping[str, Any]) -> int | None:
    """The object's resourceVersion as an integer, or None when it is not one."""
    raw = (obj.get("metadata") or {}).get("resourceVersion")
    try:
        return int(raw)
    except (TypeError, ValueError):
        return None


def newer(candidate: int | None, current: int | None) -> bool:
    """Whether an object at ``candidate`` replaces one at ``current`` (unknown: it does)."""
    return candidate is None or current is None or candidate >= current


@dataclass(frozen=True)
class CachedPod:
    """One worker pod as the reconciler needs it: the planner's view plus ownership."""

    name: str
    owner_uid: str | None  # the controlling ElasticJob's uid
    view: PodView
    version: int | None


def indexed_pod(pod: Mapping[str, Any]) -> CachedPod:
    """The cache entry for a pod API object (never raises on odd content)."""
    meta = pod.get("metadata") or {}
    owner = next((str(ref.get("uid")) for ref in meta.get("ownerReferences") or []
                  if ref.get("controller") and ref.get("kind") == KIND), None)
    return CachedPod(str(meta.get("name", "")), owner, observe_pod(pod), version_of(pod))


@dataclass
class _Expected:
    pod: CachedPod  # what we wrote, or (deleted) the pod as we last knew it
    at: float
    deleted: bool = False
    indexed: bool = False  # for a delete: the index has shown the pod since (or before) it


@dataclass
class Expectations:
    """The operator's own pod writes, until the watch-fed index shows them (see module doc)."""

    ttl: float = 60.0
    # Writes the index had still not shown when their ttl ran out: a watch that lags that
    # much is worth a warning (the reconciler logs it), since decisions then use its view.
    expired_unseen: int = 0
    _by_job: dict[Key, dict[str, _Expected]] = field(default_factory=dict)

    def wrote(self, key: Key, pod: CachedPod, now: float) -> None:
        """A create or patch returned ``pod``."""
        self._by_job.setdefault(key, {})[pod.name] = _Expected(pod, now)

    def deleted(self, key: Key, pod: CachedPod, now: float, indexed: bool) -> None:
        """A delete of ``pod`` was accepted; ``indexed``: the index holds the pod now.

        Until the watch shows it terminating or gone, the merged view shows it terminating (its
        replica index stays taken). A pod the index has not shown yet (created a moment ago)
        stays so until the index has shown it and then its deletion: its creation may still be
        on the way."""
        self._by_job.setdefault(key, {})[pod.name] = _Expected(pod, now, True, indexed)

    def forget(self, key: Key) -> None:
        self._by_job.pop(key, None)

    def pending(self, key: Key) -> int:
        """How many writes of ``key`` the index has not shown yet."""
        return len(self._by_job.get(key, {}))

    def merge(self, key: Key, indexed: Iterable[CachedPod], now: float) -> list[CachedPod]:
        """The job's pods: the index's, overlaid with the writes it has not caught up with.

        Entries the index has caught up with, or older than ``ttl``, are dropped here."""
        pods = {p.name: p for p in indexed}
        expected = self._by_job.get(key)
        if not expected:
            return list(pods.values())
        for name, entry in list(expected.items()):
            seen = pods.get(name)
            if now - entry.at > self.ttl:
                del expected[name]
                caught_up = (seen is None and entry.indexed) if entry.deleted else (
                    seen is not None and newer(seen.version, entry.pod.version))
                self.expired_unseen += not caught_up
            elif entry.deleted:
                # Seen terminating, or shown and now gone: the watch has the deletion.
                if seen.view.terminating if seen is not None else entry.indexed:
                    del expected[name]
                else:
                    # Shown only once the index has this incarnation (names are reused: an
                    # older one's deletion is not ours).
                    entry.indexed = entry.indexed or (
                        seen is not None and newer(seen.version, entry.pod.version))
                    last = seen or entry.pod
                    pods[name] = dataclasses.replace(
                        last, view=dataclasses.replace(last.view, terminating=True))
            elif seen is not None and seen.version is not None \
                    and entry.pod.version is not None and seen.version >= entry.pod.version:
                del expected[name]
            else:
                pods[name] = entry.pod
        if not expected:
            del self._by_job[key]
        return list(pods.values())


@dataclass
class JobCache:
    """The newest body of every known ElasticJob, from watch events and our status writes."""

    _jobs: dict[Key, Obj] = field(default_factory=dict)

    def observe(self, key: Key, body: Mapping[str, Any]) -> None:
        """Keep ``body`` unless the cached one is newer."""
        current = self._jobs.get(key)
        if current is None or newer(version_of(body), version_of(current)):
            self._jobs[key] = _plain(body)

    def get(self, key: Key) -> Obj | None:
        return self._jobs.get(key)

    def bodies(self) -> list[Obj]:
        """Every cached job body."""
        return list(self._jobs.values())

    def forget(self, key: Key) -> None:
        self._jobs.pop(key, None)

    def __len__(self) -> int:
        return len(self._jobs)


def _plain(body: Mapping[str, Any]) -> Obj:
    """A plain, deep copy (kopf's bodies are live views that change under us)."""
    return copy.deepcopy(dict(body))
