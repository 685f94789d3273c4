"""kopf handlers of KernelReclaimPolicy: one daemon per policy checks it every ``checkEvery``.

A check reads (the policy, its token Secret, the Jupyter kernels, the GPU metrics; the
selected pods come from the pod watch's index :func:`reclaim_pods`, not from a LIST per
check, see :mod:`~elastic_operator.reclaim.pods`), lets :mod:`elastic_operator.reclaim.plan`
decide, then acts: marks, clears marks, reclaims, posts events, counts metrics and writes
status. When a read fails the check decides nothing and reclaims nothing; the Ready condition
says why.

Secrets: the token is read into a local variable, handed to the Jupyter client and dropped; no
log line, event, condition or exception message built here contains it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from elastic_operator import labels
from elastic_operator.api.common import Condition
from elastic_operator.api.kernelreclaim import (
    KIND,
    PLURAL,
    KernelReclaimPolicySpec,
    KernelReclaimPolicyStatus,
    ReclaimAction,
    duration_seconds,
)
from elastic_operator.reclaim import gpu_metrics, plan, pods
from elastic_operator.reclaim.jupyter import JupyterClient, JupyterError
from elastic_operator.reclaim.kube import KubeError, ReclaimKube
from elastic_operator.reclaim.metrics import ReclaimMetrics, reclaim_metrics
from elastic_operator.reclaim.plan import Outcome, Verdict
from elastic_operator.reclaim.rule import Action, GpuFacts, PodFacts

log = logging.getLogger(__name__)

# Check interval while the spec is invalid (there is no valid checkEvery to use).
INVALID_RETRY_SECONDS = 60.0


class CheckFailed(Exception):
    """A read the check depends on failed; ``reason`` becomes the Ready condition's reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@kopf.index("", "v1", "pods", when=lambda body, **_: not pods.is_finished(body))
def reclaim_pods(body: kopf.Body, **_: Any) -> dict[str, pods.ObservedPod]:
    """Running pods by namespace, parsed once per watch event; a finished or deleted pod
    leaves the index (it no longer matches ``when``)."""
    pod = pods.observe(body)
    return {pod.namespace: pod}


@kopf.daemon(labels.GROUP, labels.VERSION, PLURAL, cancellation_timeout=10.0)
async def reclaim_policy(
    body: kopf.Body,
    memo: kopf.Memo,
    stopped: kopf.DaemonStopped,
    reclaim_pods: kopf.Index[str, pods.ObservedPod],
    **_: Any,
) -> None:
    """Run the policy's checks until it is deleted or the operator stops.

    ``body`` is kopf's live view, so a changed spec (checkEvery included) applies from the next
    check on. ``memo.kube`` and ``memo.metrics`` come from the operator's startup handler.
    """
    kube = ReclaimKube(memo.kube)
    metrics = reclaim_metrics(memo.metrics.registry)
    # This daemon is the status's only writer, so what it wrote last is the truth; the live
    # body may not have caught up with it yet (the watch lags), and counters must not go back.
    status = previous_status(body)
    try:
        while not stopped:
            namespace = (body.get("metadata") or {}).get("namespace", "default")
            interval, status = await check_policy(
                kube, metrics, body, status, datetime.now(UTC), reclaim_pods.get(namespace, ())
            )
            await stopped.wait(interval)
    finally:
        meta = body.get("metadata") or {}
        metrics.forget(meta.get("namespace", "default"), meta.get("name", ""))


def previous_status(body: kopf.Body | dict[str, Any]) -> KernelReclaimPolicyStatus:
    """The status stored on the policy (an unreadable one is rebuilt, not fatal)."""
    try:
        return KernelReclaimPolicyStatus.model_validate(body.get("status") or {})
    except ValidationError:
        return KernelReclaimPolicyStatus()


async def check_policy(
    kube: ReclaimKube,
    metrics: ReclaimMetrics,
    body: kopf.Body | dict[str, Any],
    previous: KernelReclaimPolicyStatus,
    now: datetime,
    namespace_pods: Iterable[pods.ObservedPod],
) -> tuple[float, KernelReclaimPolicyStatus]:
    """One check of a policy over the running pods of its namespace (``namespace_pods``);
    returns the seconds until the next one and the status written.

    Never raises for a failed read: that becomes status, an event when the reason changes,
    and a metric.
    """
    meta = body.get("metadata") or {}
    namespace, name = meta.get("namespace", "default"), meta.get("name", "")
    policy_ref = {"apiVersion": labels.API_VERSION, "kind": KIND, "metadata": dict(meta)}
    generation = int(meta.get("generation") or 0)

    try:
        spec = KernelReclaimPolicySpec.model_validate(body.get("spec") or {})
    except ValidationError as err:
        first = err.errors()[0]
        field = "spec." + ".".join(str(p) for p in first["loc"]) if first["loc"] else "spec"
        failure = CheckFailed("Invalid", f"{field}: {first['msg']}")
        status = await _report_failure(
            kube, metrics, policy_ref, previous, failure, now, generation
        )
        return INVALID_RETRY_SECONDS, status
    interval = spec.seconds("checkEvery")

    try:
        token = await _read_token(kube, namespace, spec)
    except CheckFailed as failure:
        status = await _report_failure(
            kube, metrics, policy_ref, previous, failure, now, generation
        )
        return interval, status

    selected = pods.select(namespace_pods, spec.selector)
    timeout = duration_seconds(spec.jupyter.timeout)
    async with JupyterClient(spec.jupyter.url, token, timeout) as jupyter:
        del token  # the client holds it; nothing below needs it
        try:
            kernels = await jupyter.list_kernels()
        except JupyterError as err:
            failure = CheckFailed(f"Jupyter{err.reason}", f"{err}; nothing reclaimed")
            status = await _report_failure(
                kube, metrics, policy_ref, previous, failure, now, generation
            )
            return interval, status

        gpu: dict[str, GpuFacts] = {}
        gpu_condition = None
        if spec.gpuIdle is not None:
            names = plan.candidates_for_gpu_check(selected, spec)
            gpu, why = await gpu_metrics.probe(spec.gpuIdle, namespace, names, now)
            gpu_condition = Condition(
                type=plan.GPU_METRICS,
                status="False" if why else "True",
                reason="QueryFailed" if why else "Queried",
                message=why or f"GPU utilisation of {len(names)} pod(s) queried",
            )

        verdicts = plan.decide_all(selected, kernels, gpu, spec, now)
        act = _Actor(kube, metrics, jupyter, policy_ref, spec, previous, now)
        outcomes = [o for v in verdicts if (o := await act(v)) is not None]

    ready = Condition(
        type=plan.READY,
        status="True",
        reason="DryRun" if spec.dryRun else "Checked",
        message=f"{len(verdicts)} kernel pod(s) checked"
        + ("; dry run: nothing changed" if spec.dryRun else ""),
    )
    status = plan.next_status(
        previous,
        now=now,
        verdicts=verdicts,
        outcomes=outcomes,
        ready=ready,
        gpu_condition=gpu_condition,
        generation=generation,
    )
    metrics.checked(
        namespace,
        name,
        seen=status.kernelsSeen,
        idle=status.eligible,
        warned=status.warned,
        idle_gpus=sum(v.pod.gpus for v in verdicts if v.decision.eligible),
    )
    await _write_status(kube, namespace, name, status)
    return interval, status


async def _read_token(
    kube: ReclaimKube, namespace: str, spec: KernelReclaimPolicySpec
) -> str | None:
    ref = spec.jupyter.tokenSecretRef
    if ref is None:
        return None
    try:
        return await kube.read_secret_key(namespace, ref.name, ref.key)
    except KubeError as err:
        raise CheckFailed("TokenUnavailable", f"jupyter.tokenSecretRef: {err}") from None


class _Actor:
    """Carries out one check's decisions; returns what to record for each (None: nothing)."""

    def __init__(
        self,
        kube: ReclaimKube,
        metrics: ReclaimMetrics,
        jupyter: JupyterClient,
        policy_ref: dict[str, Any],
        spec: KernelReclaimPolicySpec,
        previous: KernelReclaimPolicyStatus,
        now: datetime,
    ) -> None:
        self.kube, self.metrics, self.jupyter = kube, metrics, jupyter
        self.policy_ref = policy_ref
        self.spec, self.now = spec, now
        self.policy_name = policy_ref["metadata"].get("name", "")
        # Dry-run findings are reported once per pod, not on every check.
        self.last_action = {r.pod: r.action for r in previous.recentDecisions}

    async def __call__(self, verdict: Verdict) -> Outcome | None:
        pod, decision = verdict.pod, verdict.decision
        action = plan.record_action(decision, self.spec.dryRun)
        where = f"{pod.namespace}/{pod.name} (kernel {pod.kernel_id})"
        repeat = action == "wouldReclaim" and self.last_action.get(pod.name) == action
        if action is None or repeat:
            log.debug(
                "reclaim %s/%s: %s %s: %s",
                pod.namespace,
                self.policy_name,
                action or "keep",
                where,
                decision.reason,
            )
            return None
        log.info(
            "reclaim %s/%s: %s %s: %s",
            pod.namespace,
            self.policy_name,
            action,
            where,
            decision.reason,
        )
        try:
            if action == "wouldReclaim":
                await self._event(
                    self.policy_ref,
                    "WouldReclaim",
                    f"dry run: would reclaim pod {pod.name} (kernel "
                    f"{pod.kernel_id}, {pod.gpus} GPU): {decision.reason}",
                )
            elif decision.action == Action.WARN:
                await self.kube.set_reclaim_at(pod.namespace, pod.name, decision.reclaim_at)
                stamp = decision.reclaim_at.isoformat() if decision.reclaim_at else "?"
                await self._event(
                    _pod_ref(pod),
                    "ReclaimScheduled",
                    f"kernel {pod.kernel_id} will be reclaimed at {stamp} unless "
                    f"used ({decision.reason}); annotate {labels.RECLAIM}=never "
                    "to exempt it",
                    warning=True,
                )
            elif decision.action == Action.CLEAR_WARNING:
                await self.kube.set_reclaim_at(pod.namespace, pod.name, None)
                await self._event(
                    _pod_ref(pod),
                    "ReclaimCancelled",
                    f"kernel {pod.kernel_id} kept: {decision.reason}",
                )
            else:
                await self._reclaim(pod, decision.reason, decision.idle_seconds)
        except (KubeError, JupyterError) as err:
            log.warning(
                "reclaim %s/%s: %s %s failed: %s",
                pod.namespace,
                self.policy_name,
                action,
                where,
                err,
            )
            await self._event(
                _pod_ref(pod), "ReclaimFailed", f"{action} failed: {err}", warning=True
            )
            return Outcome(pod, "failed", f"{action} failed: {err}")
        return Outcome(pod, action, decision.reason, decision.idle_seconds)

    async def _reclaim(self, pod: PodFacts, reason: str, idle_seconds: float) -> None:
        if self.spec.action == ReclaimAction.SHUTDOWN:
            # The rule never reclaims a pod without a kernel id; "" would only 404.
            await self.jupyter.shutdown(pod.kernel_id or "")
            how = "kernel shut down through the Jupyter API"
        else:
            await self.kube.delete_pod(pod.namespace, pod.name)
            how = "kernel pod deleted"
        self.metrics.reclaimed(
            pod.namespace, self.policy_name, self.spec.action.value, pod.gpus, idle_seconds
        )
        message = f"reclaimed kernel {pod.kernel_id} ({pod.gpus} GPU): {how}; {reason}"
        await self._event(_pod_ref(pod), "Reclaimed", message)
        await self._event(self.policy_ref, "Reclaimed", f"pod {pod.name}: {message}")

    async def _event(
        self, ref: dict[str, Any], reason: str, message: str, *, warning: bool = False
    ) -> None:
        """Post an event, best effort: it reports an action already taken (or not taken), so
        a failed post is logged and does not turn that action into a failure."""
        await self.kube.post_event(ref, reason=reason, message=message, warning=warning,
                                   now=self.now)


def _pod_ref(pod: PodFacts) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod.name, "namespace": pod.namespace},
    }


async def _report_failure(
    kube: ReclaimKube,
    metrics: ReclaimMetrics,
    policy_ref: dict[str, Any],
    previous: KernelReclaimPolicyStatus,
    failure: CheckFailed,
    now: datetime,
    generation: int,
) -> KernelReclaimPolicyStatus:
    """Status (Ready False with the reason), an event when the reason changed, and a metric;
    returns the status written."""
    meta = policy_ref["metadata"]
    namespace, name = meta.get("namespace", "default"), meta.get("name", "")
    log.warning(
        "reclaim %s/%s: check failed (%s): %s", namespace, name, failure.reason, failure.message
    )
    metrics.check_failures.labels(namespace, name, failure.reason).inc()
    before = next((c for c in previous.conditions if c.type == plan.READY), None)
    if before is None or before.reason != failure.reason:
        await kube.post_event(policy_ref, reason=f"Check{failure.reason}",
                              message=failure.message, warning=True, now=now)
    ready = Condition(
        type=plan.READY, status="False", reason=failure.reason, message=failure.message
    )
    status = plan.next_status(
        previous,
        now=now,
        verdicts=[],
        outcomes=[],
        ready=ready,
        gpu_condition=None,
        generation=generation,
    )
    await _write_status(kube, namespace, name, status)
    return status


async def _write_status(
    kube: ReclaimKube, namespace: str, name: str, status: KernelReclaimPolicyStatus
) -> None:
    try:
        await kube.patch_policy_status(namespace, name, status.wire())
    except KubeError as err:
        # The next check writes a fresh status; a lost one only delays what is shown.
        log.warning("reclaim %s/%s: %s", namespace, name, err)
