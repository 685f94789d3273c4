"""Reading the formed rendezvous round without blocking reconciles."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from elastic_operator.job.rendezvous_records import (
    MAX_MESSAGE,
    MAX_ROUND_BYTES,
    RendezvousView,
    RoundReader,
    check_view,
    escape_text,
    parse_completion,
    parse_failures,
    parse_resizes,
    parse_round,
    view_limits,
)
from launcher.contract import Completion, FailureReport, ResizePath


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


# -- what the operator believes of etcd (issue 14): sizes, members, reasons, escaping --------

JOB = "job"
NOW = 1_000_000.0


def report(**over: object) -> FailureReport:
    fields: dict[str, object] = {"reason": "ProcessCrashed", "message": "boom",
                                 "node_id": "job-worker-1-7-ab12cd", "rank": 1,
                                 "timestamp": NOW}
    fields.update(over)
    return FailureReport(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(("forged", "why"), [
    (report(node_id="evil-1"), "a node id of no pod of the job"),
    (report(node_id="job-worker-9-1-aa"), "an index beyond maxReplicas"),
    (report(node_id="other-job-worker-1-1-aa"), "another job's pod"),
    (report(reason="Pwned"), "an unknown reason"),
    (report(reason="Shutdown"), "a departure, never written to etcd"),
    (report(timestamp=NOW + 86400), "dated in the future: would hide later reports"),
    (report(timestamp=0.0), "undated"),
    (report(rank=99), "a rank beyond the world"),
])
def test_check_view_drops_reports_no_worker_of_the_job_could_write(
        forged: FailureReport, why: str) -> None:
    view = RendezvousView((2, 4), (forged, report()))
    assert check_view(view, JOB, 4, 4, NOW).failures == (report(),), why


@pytest.mark.parametrize("raw", [
    b'{"reason": "ProcessCrashed", "message": "m", "node_id": "job-worker-0", "rank": "0",'
    b' "timestamp": 1}',
    b'{"reason": "ProcessCrashed", "message": ["m"], "node_id": "job-worker-0", "timestamp": 1}',
    b'{"reason": "ProcessCrashed", "message": "m", "node_id": "job-worker-0", "timestamp": NaN}',
    b'{"reason": "ProcessCrashed", "message": "m", "node_id": 7, "timestamp": 1}',
    b'{"reason": "ProcessCrashed", "message": "' + b"x" * 10_000 + b'", "node_id": "a"}',
])
def test_parse_failures_refuses_oversized_and_mistyped_reports(raw: bytes) -> None:
    assert parse_failures([raw]) == ()


def test_messages_are_escaped_and_bounded() -> None:
    text = "ok\nnext \x1b[31mred\x1b[0m \u202e\u0000 " + "y" * 5000
    (shown,) = check_view(RendezvousView(None, (report(message=text),)), JOB, 4, 4,
                          NOW).failures
    assert len(shown.message) == MAX_MESSAGE
    assert shown.message.isprintable()
    assert escape_text("a\nb\x1b[0m\u202e") == "a\\nb\\x1b[0m\\u202e"


@given(st.text(max_size=3000))
def test_escape_text_is_printable_bounded_and_keeps_printable_text(text: str) -> None:
    shown = escape_text(text, 100)
    assert shown.isprintable() and len(shown) <= 100
    if text.isprintable():
        assert shown == text[-100:]


@pytest.mark.parametrize(("raw", "why"), [
    (json.dumps({"generation": True, "members": ["a"]}).encode(), "a bool generation"),
    (json.dumps({"generation": 0, "members": ["a"]}).encode(), "generation 0"),
    (json.dumps({"generation": 2, "members": [1, 2]}).encode(), "members not node ids"),
    (json.dumps({"generation": 2, "worldSize": -3}).encode(), "a negative world"),
    (json.dumps({"generation": 2, "worldSize": "8"}).encode(), "a string world"),
    (json.dumps({"generation": 2, "members": "ab"}).encode(), "members not a list"),
    (b"[1, 2]", "not an object"),
    (b" " * (MAX_ROUND_BYTES + 1), "too large to parse"),
])
def test_parse_round_refuses_what_no_agent_writes(raw: bytes, why: str) -> None:
    assert parse_round(raw) is None, why


def test_check_view_drops_a_round_larger_than_the_job() -> None:
    assert check_view(RendezvousView((3, 9)), JOB, 4, 8, NOW).round is None
    assert check_view(RendezvousView((3, 8)), JOB, 4, 8, NOW).round == (3, 8)
    assert view_limits({"maxReplicas": 4, "nprocPerNode": 2}) == (4, 8)
    assert view_limits({"maxReplicas": "4"}) == (0, 0)  # nothing believed of a bad spec


def test_resize_records_are_parsed_checked_and_escaped() -> None:
    good = ResizePath(3, "job-worker-1-7-ab12cd", "restart", "no helpers\x1b[31m")
    raws = [good.to_json().encode(), b"garbage", b'{"generation": 3, "node_id": "x", "path": "rm"}',
            b'{"generation": true, "node_id": "x", "path": "in-place"}',
            ResizePath(2, "other-job-worker-0-1-aa", "in-place").to_json().encode()]
    parsed = parse_resizes(raws)
    assert [r.node_id for r in parsed] == ["other-job-worker-0-1-aa", good.node_id]
    kept = check_view(RendezvousView((4, 2), resizes=parsed), JOB, 4, 4, NOW).resizes
    assert [(r.node_id, r.path) for r in kept] == [(good.node_id, "restart")]
    assert kept[0].reason.isprintable() and "\\x1b" in kept[0].reason

