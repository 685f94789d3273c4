"""The etcd v3 rendezvous on its own: protocol rules (pure), concurrency and torch registration."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from torch.distributed.elastic.rendezvous import RendezvousParameters, rendezvous_handler_registry

from kube_emulator.etcd import EtcdServer
from launcher import contract
from launcher.etcd_rendezvous import (
    BACKEND_NAME,
    EtcdRendezvous,
    RendezvousClosedError,
    Round,
    Snapshot,
)
from launcher.etcd_session import Entry, EtcdSession
from tests.launcher.conftest import wait_for

P = contract.etcd_prefix("job")


def node(node_id: str, after: int, rev: int) -> tuple[str, Entry]:
    value = json.dumps({"addr": "10.0.0.1", "port": 1000 + rev, "after": after}).encode()
    return f"{P}nodes/{node_id}", Entry(value, rev, rev, 1)


def round_entry(gen: int, members: list[str]) -> tuple[str, Entry]:
    value = json.dumps({"generation": gen, "members": members, "master_addr": "10.0.0.1",
                        "master_port": 1001}).encode()
    return f"{P}round", Entry(value, 1, 50, 0)


def snap(*entries: tuple[str, Entry]) -> Snapshot:
    return Snapshot.parse(P, dict(entries))


class TestSnapshotRules:
    def test_members_are_active_until_they_announce_waiting(self) -> None:
        s = snap(node("a", 0, 2), node("b", 1, 3), round_entry(1, ["a", "b"]))
        assert s.active_members() == ["a"]
        assert [p.node_id for p in s.waiting()] == ["b"]

    def test_candidates_keep_old_rank_order_then_arrival_order(self) -> None:
        s = snap(node("new2", 3, 9), node("new1", 3, 8), node("b", 3, 3), node("a", 3, 2),
                 round_entry(3, ["b", "a"]))
        assert [p.node_id for p in s.waiting()] == ["b", "a", "new1", "new2"]

    def test_dead_member_is_one_without_a_key(self) -> None:
        s = snap(node("a", 0, 2), round_entry(1, ["a", "b"]))
        assert s.dead_members() == ["b"]

    def test_malformed_keys_are_ignored_not_fatal(self) -> None:
        s = snap(node("a", 0, 2), (f"{P}nodes/bad", Entry(b"{not json", 3, 3, 1)))
        assert list(s.participants) == ["a"]


def _rdzv(server: EtcdServer, run_id: str, node_id: str, lo: int, hi: int,
          settle: float = 1.0) -> EtcdRendezvous:
    session = EtcdSession(server.endpoint, contract.etcd_prefix(run_id), lease_ttl=2,
                          name=node_id).start()
    return EtcdRendezvous(session, run_id, node_id, lo, hi, "127.0.0.1", settle=settle)


@pytest.mark.slow
def test_64_concurrent_participants_form_one_generation(etcd_server: EtcdServer) -> None:
    n = 64
    rdzvs = [_rdzv(etcd_server, "many", f"p{i:02d}", 1, n) for i in range(n)]
    try:
        with ThreadPoolExecutor(max_workers=n) as pool:
            rounds = list(pool.map(lambda r: r.next_round(120), rdzvs))
        assert {r.generation for r in rounds} == {1}
        assert {r.world_size for r in rounds} == {n}
        assert sorted(r.rank for r in rounds) == list(range(n))
        assert len({(r.master_addr, r.master_port) for r in rounds}) == 1
    finally:
        for r in rdzvs:
            r.session.close()


@pytest.mark.slow
def test_members_see_a_lost_peer_and_a_newcomer(etcd_server: EtcdServer) -> None:
    a, b = _rdzv(etcd_server, "watch", "a", 1, 3), _rdzv(etcd_server, "watch", "b", 1, 3)
    c: EtcdRendezvous | None = None
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            ra, _ = pool.map(lambda r: r.next_round(60), (a, b))
        assert a.reform_reason(ra) is None
        c = _rdzv(etcd_server, "watch", "c", 1, 3)
        c.announce_waiting()
        changed = threading.Event()
        a.session.add_listener(changed.set)
        assert _eventually(lambda: a.reform_reason(ra), 10) == "new peer waiting: c"
        c.session.close(revoke=True)  # a newcomer that leaves again
        b.session.close(revoke=True)  # a member that dies: its lease goes with it
        reason = _eventually(lambda: _lost_reason(a, ra), 10)
        assert reason == "peer lost: b (lease expired)"
        assert changed.is_set()
        # The survivor forms the next round alone, at once (no settle wait on re-formation).
        r2 = a.next_round(10)
        assert (r2.generation, r2.members) == (2, ("a",))
    finally:
        for r in (a, b, c):
            if r is not None:
                r.session.close()


def _eventually(fn: Callable[[], str | None], timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.05)
    return fn()


def _lost_reason(rdzv: EtcdRendezvous, current: Round) -> str | None:
    reason = rdzv.reform_reason(current)
    return reason if reason and reason.startswith("peer lost") else None


@pytest.mark.slow
def test_closed_rendezvous_turns_late_joiners_away(etcd_server: EtcdServer) -> None:
    a = _rdzv(etcd_server, "closed", "a", 1, 1)
    late = _rdzv(etcd_server, "closed", "late", 1, 1)
    try:
        first = a.next_round(30)
        assert (first.generation, first.members, first.rank) == (1, ("a",), 0)
        a.set_closed()
        with pytest.raises(RendezvousClosedError):
            late.next_round(30)
    finally:
        a.session.close()
        late.session.close()


@pytest.mark.slow
def test_torch_registry_creates_a_working_handler(etcd_server: EtcdServer) -> None:
    import launcher.torch_rendezvous  # noqa: F401  (registers the backend on import)

    def make():  # type: ignore[no-untyped-def]
        params = RendezvousParameters(BACKEND_NAME, etcd_server.endpoint, "torch-registry", 2, 2,
                                      local_addr="127.0.0.1", lease_ttl=2)
        return rendezvous_handler_registry.create_handler(params)

    handlers = [make(), make()]
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            infos = list(pool.map(lambda h: h.next_rendezvous(), handlers))
        assert sorted(i.rank for i in infos) == [0, 1]
        assert {i.world_size for i in infos} == {2}
        boot = {(i.bootstrap_store_info.master_addr, i.bootstrap_store_info.master_port)
                for i in infos}
        assert len(boot) == 1
        # The per-round store works across both handlers (what torch's agent relies on).
        infos[0].store.set("probe", b"hello")
        assert infos[1].store.get("probe") == b"hello"
        assert handlers[0].num_nodes_waiting() == 0
        assert handlers[0].get_backend() == BACKEND_NAME
    finally:
        for h in handlers:
            h.shutdown()


@pytest.mark.slow
def test_session_recovers_a_lost_lease_and_its_keys(etcd_server: EtcdServer) -> None:
    session = EtcdSession(etcd_server.endpoint, "/t/", lease_ttl=2, name="s").start()
    try:
        session.put_owned("/t/me", b"here")
        old = session.lease_id
        session.client.revoke_lease(old)  # what etcd does when a lease expires
        renewed = _eventually(lambda: _lease_of(session, "/t/me", old), 15)
        assert renewed == "renewed" and session.lease_id != old
    finally:
        session.close()


def _lease_of(session: EtcdSession, key: str, old: int) -> str | None:
    entry = session.view()[1].get(key)
    return "renewed" if entry is not None and entry.lease not in (0, old) else None


class TestInPlaceRules:
    """Issue 15: leaving members, readiness, and the fast close after a reported loss."""

    def test_a_leaving_member_is_no_candidate_and_no_straggler(self) -> None:
        leaving = (f"{P}nodes/b", Entry(json.dumps({"addr": "h", "port": 1, "after": 0,
                                                    "leaving": True}).encode(), 3, 3, 1))
        s = snap(node("a", 1, 2), leaving, round_entry(1, ["a", "b"]))
        assert s.leaving_members() == ["b"]
        assert [p.node_id for p in s.waiting()] == ["a"]
        assert s.active_members() == []
        assert s.dead_members() == []

    def test_readiness_is_per_generation_and_member(self) -> None:
        s = snap(node("a", 1, 2), node("b", 1, 3), round_entry(2, ["a", "b"]),
                 (f"{P}ready/2/a", Entry(b"1", 4, 4, 1)), (f"{P}ready/1/b", Entry(b"1", 5, 5, 1)))
        rnd = Round(2, ("a", "b"), "h", 1, "a")
        assert not s.all_ready(rnd)
        s2 = snap(node("a", 1, 2), node("b", 1, 3), round_entry(2, ["a", "b"]),
                  (f"{P}ready/2/a", Entry(b"1", 4, 4, 1)), (f"{P}ready/2/b", Entry(b"1", 5, 5, 1)))
        assert s2.all_ready(rnd)

    def test_loss_reported_by_every_waiting_member(self) -> None:
        s = snap(node("a", 1, 2), node("b", 1, 3), node("c", 0, 4), round_entry(1, ["a", "b", "c"]),
                 (f"{P}lost/1/a", Entry(b"1", 5, 5, 1)))
        assert s.active_members() == ["c"]
        assert not s.lost_reported_by_all(s.waiting())
        s = snap(node("a", 1, 2), node("b", 1, 3), node("c", 0, 4), round_entry(1, ["a", "b", "c"]),
                 (f"{P}lost/1/a", Entry(b"1", 5, 5, 1)), (f"{P}lost/1/b", Entry(b"1", 6, 6, 1)))
        assert s.lost_reported_by_all(s.waiting())

    def test_a_member_left_out_after_a_loss_waits_until_it_re_announces(self) -> None:
        value = json.dumps({"generation": 2, "members": ["a", "b"], "master_addr": "h",
                            "master_port": 1, "excluded": ["c"]}).encode()
        stale = snap(node("a", 1, 2), node("b", 1, 3), node("c", 0, 4),
                     (f"{P}round", Entry(value, 1, 50, 0)))
        assert [p.node_id for p in stale.waiting()] == []
        back = snap(node("a", 1, 2), node("b", 1, 3), node("c", 2, 60),
                    (f"{P}round", Entry(value, 1, 50, 0)))
        assert [p.node_id for p in back.waiting()] == ["c"]


@pytest.mark.slow
def test_a_reported_loss_closes_the_round_before_the_lease_expires(
        etcd_server: EtcdServer) -> None:
    rdzvs = [_rdzv(etcd_server, "lost", n, 1, 3) for n in ("a", "b", "c")]
    a, b, c = rdzvs
    try:
        with ThreadPoolExecutor(max_workers=3) as pool:
            first = list(pool.map(lambda r: r.next_round(60), rdzvs))
        assert {r.world_size for r in first} == {3}
        c.session._stop.set()  # c "hangs": its lease lives on for a while, it never follows
        a.report_lost(first[0].generation)
        b.report_lost(first[0].generation)
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=2) as pool:
            second = list(pool.map(lambda r: r.next_round(30), (a, b)))
        assert {frozenset(r.members) for r in second} == {frozenset(("a", "b"))}
        assert time.monotonic() - started < 1.9  # shorter than the 2 s lease TTL
        assert "c" in a.snapshot().excluded
    finally:
        for r in rdzvs:
            r.session.close(revoke=False)


@pytest.mark.slow
def test_an_excluded_node_that_fails_and_re_announces_is_taken_back(
        etcd_server: EtcdServer) -> None:
    """The excluded member was frozen, not dead: its agent restarts it and announces a round
    newer than the one it failed in (an older generation than the exclusion): it must be a
    candidate again, or the job trains on without it."""
    rdzvs = [_rdzv(etcd_server, "back", n, 1, 3) for n in ("a", "b", "c")]
    a, b, c = rdzvs
    try:
        with ThreadPoolExecutor(max_workers=3) as pool:
            first = list(pool.map(lambda r: r.next_round(60), rdzvs))
        a.report_lost(first[0].generation)
        b.report_lost(first[0].generation)
        with ThreadPoolExecutor(max_workers=2) as pool:
            second = list(pool.map(lambda r: r.next_round(30), (a, b)))
        assert "c" in a.snapshot().excluded
        c.announce_waiting(after=first[2].generation)  # what the agent's failure path does
        deadline = time.monotonic() + 10  # a's view is its watch cache: it may lag a moment
        while a.reform_reason(second[0]) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert a.reform_reason(second[0]) == "new peer waiting: c"
        with ThreadPoolExecutor(max_workers=3) as pool:
            third = list(pool.map(lambda r: r.next_round(30), rdzvs))
        assert {r.world_size for r in third} == {3}, third
    finally:
        for r in rdzvs:
            r.session.close(revoke=False)


@pytest.mark.slow
def test_nodes_that_failed_together_agree_on_the_origin(etcd_server: EtcdServer) -> None:
    """Each node counts its own claim at once, not when the watch brings it back: a node that
    has seen only its peer's later claim still names itself, so exactly one of two nodes whose
    processes failed together counts the failure (before, each could name the other)."""
    a, b = (_rdzv(etcd_server, "faults", n, 2, 2) for n in ("a", "b"))
    try:
        b.claim_fault(3, 20.0)
        wait_for(lambda: "3/b" in a.snapshot().faults, 10, "a to see b's claim", interval=0.01)
        # a's own claim (earlier) is not written yet: as if its watch lagged behind its put.
        assert a.fault_origin(3, own=10.0) == "a"
        assert b.fault_origin(3, own=20.0) == "b"  # b has not seen a's claim: itself
        a.claim_fault(3, 10.0)
        wait_for(lambda: "3/a" in b.snapshot().faults, 10, "b to see a's claim", interval=0.01)
        assert b.fault_origin(3, own=20.0) == "a"
        assert a.fault_origin(3, own=10.0) == "a"
        assert a.fault_origin(4) is None
    finally:
        for r in (a, b):
            r.session.close(revoke=False)
