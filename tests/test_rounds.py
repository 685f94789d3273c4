"""Reading the formed rendezvous round without blocking reconciles."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from elastic_operator.rounds import RendezvousView, RoundReader, parse_failures, parse_round
from launcher.contract import FailureReport


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (json.dumps({"generation": 2, "worldSize": 8}).encode(), (2, 8)),
        (json.dumps({"generation": 1, "nodes": ["a", "b"]}).encode(), (1, 2)),
        (b"not json", None),
        (b'{"worldSize": 3}', None),
        (None, None),
    ],
)
def test_parse_round(raw: bytes | None, expected: tuple[int, int] | None) -> None:
    assert parse_round(raw) == expected


async def test_unreachable_etcd_is_probed_once_and_answers_come_from_the_cache() -> None:
    changed: list[tuple[str, str]] = []
    reader = RoundReader(changed.append, max_age_seconds=0, retry_seconds=60,
                         retry_base_seconds=60)
    calls = []
    release = threading.Event()

    def failing_read(endpoints: str, rdzv_id: str) -> tuple[int, int] | None:
        calls.append(rdzv_id)
        release.wait(10)
        raise ConnectionError("refused")

    reader._read = failing_read  # type: ignore[method-assign]
    for i in range(20):
        assert reader.latest(("ns", f"j{i}"), "etcd:2379", f"id{i}") == RendezvousView()
    release.set()
    await asyncio.sleep(0.2)
    for i in range(20):  # down: not retried before retry_seconds
        assert reader.latest(("ns", f"j{i}"), "etcd:2379", f"id{i}") == RendezvousView()
    await asyncio.sleep(0.1)
    assert calls == ["id0"]

    seen = RendezvousView((4, 16), ())
    reader._read = lambda endpoints, rdzv_id: seen  # type: ignore[method-assign,assignment]
    reader._down_until.clear()
    reader.latest(("ns", "j0"), "etcd:2379", "id0")
    for _ in range(100):
        if changed:
            break
        await asyncio.sleep(0.02)
    assert changed == [("ns", "j0")]
    assert reader.latest(("ns", "j0"), "etcd:2379", "id0") == seen
    await reader.close()


def test_parse_failures_skips_garbage_and_orders_by_time() -> None:
    late = FailureReport("ProcessHung", "m", "n1", timestamp=20.0)
    early = FailureReport("ProcessCrashed", "m", "n2", timestamp=10.0)
    parsed = parse_failures([late.to_json().encode(), b"{oops", early.to_json().encode()])
    assert parsed == (early, late)
