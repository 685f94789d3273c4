"""Reading the formed rendezvous round without blocking reconciles."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from elastic_operator.rounds import (
    RendezvousView,
    RoundReader,
    parse_completion,
    parse_failures,
    parse_round,
)
from launcher.contract import Completion, FailureReport


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


ROUND = json.dumps({"generation": 4, "members": ["w-0-1", "w-1-2"], "master_addr": "h",
                    "master_port": 1}).encode()


@pytest.mark.parametrize(
    ("record", "round_value", "taken"),
    [
        (Completion(4, ("w-0-1", "w-1-2"), "w-1-2", 1.0), ROUND, True),
        # a record for an older round (a resize happened after it was written): no evidence
        (Completion(3, ("w-0-1", "w-1-2"), "w-0-1", 1.0), ROUND, False),
        # the right generation but other members: not the round etcd holds
        (Completion(4, ("w-0-1", "x-9"), "x-9", 1.0), ROUND, False),
        (Completion(4, ("w-0-1", "w-1-2"), "w-0-1", 1.0), None, False),
        (Completion(4, ("w-0-1", "w-1-2"), "w-0-1", 1.0), b"garbage", False),
    ],
)
def test_parse_completion_checks_the_record_against_the_round(
        record: Completion, round_value: bytes | None, taken: bool) -> None:
    found = parse_completion(record.to_json().encode(), round_value)
    assert (found == record) if taken else found is None


@pytest.mark.parametrize("raw", [
    b"not json",
    b'{"completed": true, "generation": 4, "members": ["w-0-1"], "node_id": "intruder"}',
    b'{"completed": true, "generation": 0, "members": ["w-0-1"], "node_id": "w-0-1"}',
    b'{"completed": "yes", "generation": 4, "members": ["w-0-1"], "node_id": "w-0-1"}',
    b'{"completed": true, "generation": 4, "members": "w-0-1", "node_id": "w-0-1"}',
    b'{"completed": true, "generation": 4, "members": ["w-0-1"], "node_id": "w-0-1", '
    b'"timestamp": "soon"}',
    b'{"completed": true, "generation": 4, "members": ["' + b"x" * 300 + b'"], "node_id": "x"}',
    b'{"completed": true, "pad": "' + b"x" * 2_000_000 + b'"}',
])
def test_forged_or_malformed_completions_are_refused(raw: bytes) -> None:
    with pytest.raises(ValueError):
        Completion.from_json(raw)
    assert parse_completion(raw, ROUND) is None
