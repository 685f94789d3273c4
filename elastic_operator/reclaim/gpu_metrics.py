"""GPU idleness of kernel pods from a DCGM exporter's utilisation gauge in Prometheus.

The gauge is ``DCGM_FI_DEV_GPU_UTIL`` (percent) or ``DCGM_FI_PROF_GR_ENGINE_ACTIVE`` (a 0-1
ratio), the two dcgm-exporter exports by default, or another one with its unit; samples are
compared in percent, so ``threshold`` means the same for every metric.

One instant query of a range selector (``DCGM_FI_DEV_GPU_UTIL{namespace="ns",pod=~"a|b"}[600s]``)
returns the raw samples of every GPU series of the pods in the window, with their real scrape
times. Raw samples matter: ``query_range`` or ``max_over_time`` would stretch the last value of a
vanished exporter over Prometheus's 5-minute lookback and make stale data look fresh.

A pod's GPUs are IDLE only when every series is fresh (newest sample at most ``metricLagGrace``
old), covers the window (oldest sample at most ``metricLagGrace`` after its start), and every
sample is at or below the threshold (so ``threshold: 0`` asks for a GPU that read exactly zero).
No series, stale or short data, or a failed query give UNKNOWN.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp

from elastic_operator.api.kernelreclaim import GpuIdleSpec, duration_seconds
from elastic_operator.reclaim.rule import GpuFacts, GpuState


@dataclass(frozen=True)
class Series:
    """The samples of one GPU series in the window: (unix time, utilisation) pairs."""

    pod: str
    samples: list[tuple[float, float]]


def _quote_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def build_query(spec: GpuIdleSpec, namespace: str, pods: Iterable[str]) -> str:
    """The PromQL range selector for ``pods`` of ``namespace`` over the spec's window."""
    alternatives = "|".join(re.escape(p) for p in sorted(set(pods)))
    window = max(1, round(duration_seconds(spec.window)))
    return (
        f'{spec.metric}{{{spec.namespaceLabel}="{_quote_label(namespace)}",'
        f'{spec.podLabel}=~"{_quote_label(alternatives)}"}}[{window}s]'
    )


def parse_matrix(body: Any, pod_label: str) -> list[Series]:
    """The series of a Prometheus ``/api/v1/query`` matrix answer; raises ValueError if it is
    not one (an error status, another result type, or malformed values)."""
    if not isinstance(body, dict) or body.get("status") != "success":
        error = body.get("error", "no error given") if isinstance(body, dict) else "not JSON"
        raise ValueError(f"query failed: {error}")
    data = body.get("data") or {}
    if data.get("resultType") != "matrix":
        raise ValueError(f"expected a matrix, got {data.get('resultType')!r}")
    out = []
    for item in data.get("result") or []:
        pod = (item.get("metric") or {}).get(pod_label)
        if not pod:
            continue
        samples = [(float(t), float(v)) for t, v in item.get("values") or []]
        out.append(Series(pod=pod, samples=samples))
    return out


def judge(
    series: list[Series], pods: Iterable[str], spec: GpuIdleSpec, now: datetime
) -> dict[str, GpuFacts]:
    """The verdict per pod from its series (pure; see the module docstring for the rule)."""
    threshold = spec.threshold
    # Compared in the metric's own unit (0.1 > 10 / 100 is exact, 0.1 * 100 > 10 is not);
    # reported in percent.
    to_percent = 100.0 if spec.metric_unit() == "ratio" else 1.0
    limit = threshold / to_percent
    window = duration_seconds(spec.window)
    grace = duration_seconds(spec.metricLagGrace)
    end = now.timestamp()
    by_pod: dict[str, list[Series]] = {}
    for s in series:
        by_pod.setdefault(s.pod, []).append(s)
    verdicts: dict[str, GpuFacts] = {}
    for pod in pods:
        found = by_pod.get(pod, [])
        samples = [v for s in found for _, v in s.samples]
        if not found or not samples:
            verdicts[pod] = GpuFacts(GpuState.UNKNOWN, "no GPU utilisation samples")
            continue
        top = max(samples)
        peak = top * to_percent
        if top > limit:
            verdicts[pod] = GpuFacts(GpuState.BUSY, f"peak {peak:g}% > {threshold:g}%")
            continue
        newest = min(s.samples[-1][0] for s in found if s.samples)
        oldest = max(s.samples[0][0] if s.samples else end for s in found)
        if end - newest > grace:
            verdicts[pod] = GpuFacts(GpuState.UNKNOWN, f"newest sample {end - newest:.0f}s old")
        elif oldest - (end - window) > grace:
            verdicts[pod] = GpuFacts(
                GpuState.UNKNOWN, f"samples cover {end - oldest:.0f}s of the {window:.0f}s window"
            )
        else:
            verdicts[pod] = GpuFacts(
                GpuState.IDLE, f"peak {peak:g}% <= {threshold:g}% over {window:.0f}s"
            )
    return verdicts


async def probe(
    spec: GpuIdleSpec, namespace: str, pods: list[str], now: datetime, timeout: float = 10.0
) -> tuple[dict[str, GpuFacts], str | None]:
    """Verdicts for ``pods`` and, if Prometheus could not be asked, why (then all UNKNOWN)."""
    if not pods:
        return {}, None
    url = spec.prometheusUrl.rstrip("/") + "/api/v1/query"
    params = {"query": build_query(spec, namespace, pods), "time": f"{now.timestamp():.3f}"}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(url, params=params) as resp,
        ):
            body = await resp.json(content_type=None)
        series = parse_matrix(body, spec.podLabel)
    except (aiohttp.ClientError, TimeoutError, ValueError) as err:
        why = f"Prometheus {spec.prometheusUrl}: {type(err).__name__}: {err}"
        return {p: GpuFacts(GpuState.UNKNOWN, why) for p in pods}, why
    return judge(series, pods, spec, now), None
