"""Rendezvous on etcd's v3 API: membership by leases, rounds by compare-and-swap, waits by watch.

torch's own etcd backends speak etcd's v2 API (hidden in 3.4, removed in 3.6); this one is v3
only. ``EtcdRendezvous`` is the protocol, free of torch imports so the agent starts fast;
``launcher.torch_rendezvous`` adapts it to torch's ``RendezvousHandler`` and registers it as
backend ``"etcd-v3"``.

Protocol. All keys live under ``contract.etcd_prefix(run_id)`` = ``P``:

- ``P/nodes/<node_id>`` -- one per participant, bound to the participant's lease (TTL 2 s by
  default, kept alive by ``EtcdSession``). Value: ``{"addr", "port", "after"}``. ``addr:port``
  is a free port on the node, used as MASTER_ADDR:MASTER_PORT when the node gets rank 0.
  ``after = g`` means "I want to be in a round whose generation is greater than g". The key
  vanishes when the agent dies (lease expiry), which is how peers learn of a lost node.
  ``"leaving": true`` (a pod being deleted): the node is never a candidate again, and its
  round re-forms without it at once, while its training processes finish their step.
- ``P/ready/<g>/<node_id>`` (lease-bound): the node's training processes can join round ``g``
  now. A member that resizes in place hands a round to its processes only once every member
  is ready, so survivors never wait for a joiner's interpreter start.
- ``P/lost/<g>/<node_id>`` (lease-bound): the node's training processes lost a peer mid-step
  in round ``g`` (a collective failed). When every waiting member of ``g`` says so, the round
  closes without the members that did not follow after ``LOST_QUIET`` seconds: a SIGKILLed
  node is left out before its lease expires.
- ``P/resize/<node_id>`` (lease-bound): how the node took its last re-formation, a
  ``contract.ResizePath`` (in place, or by restart and why); the operator makes it an event.
- ``P/round`` -- the current round: ``{"generation", "members", "master_addr", "master_port"}``;
  a member's rank is its index in ``members``. Only ever replaced by a transaction that compares
  the key's mod revision with the one the writer read (compare-and-swap), and that checks every
  new member's node key still exists. Two closers racing: exactly one wins; the loser re-reads.
- ``P/closed`` -- the job's ``contract.Completion``: written once, by a member of the round in
  which training reached its end, in a transaction that checks the round is still that one
  (``complete``). Late joiners and spares stop when they see it.

Derived from one consistent snapshot (``Snapshot``): a node is *active* if it is a member of the
round and its ``after`` is below the round's generation; otherwise it is *waiting*. A member
whose key is gone is *dead*.

- Joining / re-forming: a node writes its key with ``after`` = the last generation it ran in
  (or the current one when it was not a member), then waits on the watched cache.
- Closing a round (any waiting node may try): candidates are the waiting nodes, previous
  members first in their old rank order (so rank 0 stays put when it can), then newcomers in
  arrival order (key create revision), at most ``max_nodes``. The round closes when there are
  at least ``min_nodes`` candidates and no active member is left behind, and either
  ``max_nodes`` are there, or it is a re-formation (an existing round: everyone alive is
  already in), or -- for the first round only -- nobody new arrived for ``settle`` seconds.
  This is why formation does not wait torch's long last-call timeout when min < max, and why a
  shrink does not wait any timeout meant for slow starts. An active member that does not
  follow within ``reform_timeout`` (its agent is stuck) is left out; it re-joins later.
- Members react (``EtcdRendezvous.reform_reason``): a dead member, a member that is waiting, or
  a waiting newcomer while the round has fewer than ``max_nodes`` -> re-form. Spares beyond
  ``max_nodes`` wait without disturbing a full round.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from dataclasses import dataclass, field

from etcd3 import transactions as tx

from launcher import contract
from launcher.etcd_session import Entry, EtcdSession, EtcdUnavailableError

log = logging.getLogger(__name__)


class RendezvousClosedError(Exception):
    """The job finished (``set_closed``); no further rounds will form."""


class RendezvousTimeoutError(Exception):
    """No round including this node formed in time."""


BACKEND_NAME = "etcd-v3"
DEFAULT_LEASE_TTL = 2
DEFAULT_SETTLE = 1.0
DEFAULT_REFORM_TIMEOUT = 30.0
DEFAULT_JOIN_TIMEOUT = 600.0
LOST_QUIET = 0.25


def free_port(addr: str = "") -> int:
    """A currently free TCP port on this host (there is an unavoidable reuse race, as in torch)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((addr if addr in ("127.0.0.1", "localhost") else "", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Participant:
    node_id: str
    addr: str
    port: int
    after: int
    create_revision: int
    leaving: bool = False


@dataclass(frozen=True)
class Round:
    """A formed round as seen by one node; ``rank`` is this node's group rank."""

    generation: int
    members: tuple[str, ...]
    master_addr: str
    master_port: int
    node_id: str

    @property
    def rank(self) -> int:
        return self.members.index(self.node_id)

    @property
    def world_size(self) -> int:
        return len(self.members)


@dataclass(frozen=True)
class Snapshot:
    """The rendezvous state at one etcd revision, parsed from the session's cache."""

    participants: dict[str, Participant]
    round: Round | None
    round_revision: int
    completion: contract.Completion | None
    faults: dict[str, float] = field(default_factory=dict)
    ready: frozenset[tuple[int, str]] = frozenset()
    lost: frozenset[tuple[int, str]] = frozenset()
    # Members the current round left out after a reported loss; not candidates again until
    # they re-announce (their key may outlive them by a lease TTL).
    excluded: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, prefix: str, cache: dict[str, Entry]) -> Snapshot:
        participants: dict[str, Participant] = {}
        faults: dict[str, float] = {}
        marks: dict[str, set[tuple[int, str]]] = {"ready": set(), "lost": set()}
        current: Round | None = None
        revision = 0
        excluded: frozenset[str] = frozenset()
        completion: contract.Completion | None = None
        for key, entry in cache.items():
            rel = key[len(prefix):]
            try:
                if rel.startswith("nodes/"):
                    data = json.loads(entry.value)
                    node = rel[len("nodes/"):]
                    participants[node] = Participant(
                        node, data["addr"], int(data["port"]), int(data["after"]),
                        entry.create_revision, bool(data.get("leaving", False)),
                    )
                elif rel == "round":
                    data = json.loads(entry.value)
                    current = Round(int(data["generation"]), tuple(data["members"]),
                                    data["master_addr"], int(data["master_port"]), "")
                    revision = entry.mod_revision
                    excluded = frozenset(data.get("excluded", ()))
                elif rel == "closed":
                    completion = contract.Completion.from_json(entry.value)
                elif rel.startswith("faults/"):
                    faults[rel[len("faults/"):]] = float(json.loads(entry.value)["t"])
                elif rel.startswith(("ready/", "lost/")):
                    kind, gen, node = rel.split("/", 2)
                    marks[kind].add((int(gen), node))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring malformed rendezvous key %s: %r", key, exc)
        return cls(participants, current, revision, completion, faults,
                   frozenset(marks["ready"]), frozenset(marks["lost"]), excluded)

    @property
    def generation(self) -> int:
        return self.round.generation if self.round else 0

    @property
    def closed(self) -> bool:
        """Training finished: no further rounds form."""
        return self.completion is not None

    def is_active(self, node_id: str) -> bool:
        p = self.participants.get(node_id)
        return (p is not None and self.round is not None and node_id in self.round.members
                and p.after < self.round.generation)

    def waiting(self) -> list[Participant]:
        """Waiting participants in candidate order: old members by old rank, then arrivals."""
        members = self.round.members if self.round else ()
        order = {node: i for i, node in enumerate(members)}
        waiting = [p for p in self.participants.values()
                   if not self.is_active(p.node_id) and not p.leaving
                   and not (p.node_id in self.excluded and p.after < self.generation)]
        return sorted(waiting, key=lambda p: (order.get(p.node_id, len(order)),
                                              p.create_revision, p.node_id))

    def dead_members(self) -> list[str]:
        if self.round is None:
            return []
        return [m for m in self.round.members if m not in self.participants]

    def active_members(self) -> list[str]:
        return [m for m in (self.round.members if self.round else ()) if self.is_active(m)
                and not self.participants[m].leaving]

    def leaving_members(self) -> list[str]:
        return [m for m in (self.round.members if self.round else ())
                if m in self.participants and self.participants[m].leaving]

    def all_ready(self, rnd: Round) -> bool:
        """Every member of ``rnd`` said its training processes can join it."""
        return all((rnd.generation, m) in self.ready for m in rnd.members)

    def lost_reported_by_all(self, candidates: list[Participant]) -> bool:
        """Every waiting member of the current round reported a lost peer in it."""
        if self.round is None:
            return False
        old = [p.node_id for p in candidates if p.node_id in self.round.members]
        return bool(old) and all((self.round.generation, n) in self.lost for n in old)


class EtcdRendezvous:
    """One node's side of the protocol in the module docstring.

    Thread-safe for one caller of ``next_round`` at a time; ``reform_reason``,
    ``num_nodes_waiting`` and ``snapshot`` may be called from any thread.
    """

    def __init__(
        self,
        session: EtcdSession,
        run_id: str,
        node_id: str,
        min_nodes: int,
        max_nodes: int,
        local_addr: str,
        settle: float = DEFAULT_SETTLE,
        reform_timeout: float = DEFAULT_REFORM_TIMEOUT,
    ) -> None:
        if not 1 <= min_nodes <= max_nodes:
            raise ValueError(
                f"--nnodes={min_nodes}:{max_nodes}: need 1 <= MIN <= MAX"
            )
        self.session = session
        self.run_id = run_id
        self.prefix = contract.etcd_prefix(run_id)
        self.node_id = node_id
        self.min_nodes = min_nodes
        self.max_nodes = max_nodes
        self.local_addr = local_addr
        self.settle = settle
        self.reform_timeout = reform_timeout
        self.last_generation = 0
        self._lock = threading.Lock()

    @property
    def node_key(self) -> str:
        return f"{self.prefix}nodes/{self.node_id}"

    @property
    def round_key(self) -> str:
        return f"{self.prefix}round"

    def snapshot(self) -> Snapshot:
        _, cache = self.session.view()
        return Snapshot.parse(self.prefix, cache)

    # -- joining -----------------------------------------------------------------------------

    def announce_leaving(self) -> None:
        """This node is going away (pod deletion): peers re-form without it at once."""
        value = {"addr": self.local_addr, "port": 0, "after": self.last_generation,
                 "leaving": True}
        self.session.put_owned(self.node_key, json.dumps(value).encode())

    def mark_ready(self, generation: int) -> None:
        """This node's training processes can join round ``generation`` now."""
        self.session.put(f"{self.prefix}ready/{generation}/{self.node_id}", b"1",
                         with_lease=True)

    def record_resize(self, record: contract.ResizePath) -> None:
        """Say how this node took the re-formation (read by the operator for its events)."""
        self.session.put(contract.resize_key(self.run_id, self.node_id),
                         record.to_json().encode(),
                         with_lease=True)

    def report_lost(self, generation: int) -> None:
        """This node's training processes lost a peer mid-step in round ``generation``."""
        self.session.put(f"{self.prefix}lost/{generation}/{self.node_id}", b"1",
                         with_lease=True)

    def announce_waiting(self, after: int | None = None) -> None:
        """Publish "I want a round newer than ``after``" (default: the last one I ran in).

        A node the current round excluded (it did not follow a reported loss, e.g. its process
        was frozen and is being restarted) asks for a round newer than that one: announcing
        an older ``after`` would leave it excluded, and the job would train without it."""
        snap = self.snapshot()
        if after is None:
            after = (self.last_generation if self.node_id in (
                snap.round.members if snap.round else ()) else snap.generation)
            after = max(after, self.last_generation)
        elif self.node_id in snap.excluded:
            after = max(after, snap.generation)
        value = {"addr": self.local_addr, "port": free_port(self.local_addr), "after": after}
        self.session.put_owned(self.node_key, json.dumps(value).encode())

    def next_round(self, timeout: float = DEFAULT_JOIN_TIMEOUT) -> Round:
        """Block until a round containing this node forms; return it.

        Raises RendezvousClosedError when the job has finished, RendezvousTimeoutError after
        ``timeout`` seconds. etcd outages are waited out (the deadline still applies).
        """
        with self._lock:
            deadline = time.monotonic() + timeout
            announced = False
            waiting_set: frozenset[str] = frozenset()
            changed_at = time.monotonic()
            version = -1
            while True:
                now = time.monotonic()
                if now > deadline:
                    raise RendezvousTimeoutError(
                        f"rendezvous {self.run_id}: no round with this node within {timeout}s "
                        f"(need at least {self.min_nodes} nodes)"
                    )
                if not self.session.connected:
                    version = self.session.wait_change(version, 0.5)
                    continue
                snap = self.snapshot()
                if snap.closed:
                    raise RendezvousClosedError(f"rendezvous {self.run_id} is closed (job done)")
                active = snap.is_active(self.node_id)
                if active and snap.generation > self.last_generation:
                    assert snap.round is not None
                    self.last_generation = snap.generation
                    r = snap.round
                    return Round(r.generation, r.members, r.master_addr, r.master_port,
                                 self.node_id)
                # Announce at most once per call; the session re-puts the key on a new lease.
                me = snap.participants.get(self.node_id)
                excluded = (me is not None and self.node_id in snap.excluded
                            and me.after < snap.generation)
                if not announced and (me is None or active or excluded):
                    try:
                        self.announce_waiting()
                        announced = True
                    except EtcdUnavailableError:
                        continue
                    version = self.session.wait_change(version, 0.05)
                    continue
                waiting = frozenset(p.node_id for p in snap.waiting())
                if waiting != waiting_set:
                    waiting_set, changed_at = waiting, now
                wait_for = self._try_close(snap, now - changed_at)
                version = self.session.wait_change(version, min(wait_for, deadline - now))

    def _try_close(self, snap: Snapshot, quiet_for: float) -> float:
        """Close the round if the rules allow; return how long to wait before re-checking."""
        candidates = snap.waiting()[: self.max_nodes]
        if self.node_id not in {p.node_id for p in candidates}:
            return 1.0
        if len(candidates) < self.min_nodes:
            return 1.0
        stragglers = snap.active_members()
        # A member that did not follow a reported loss is the lost one (or as good as lost):
        # its lease would tell the same, seconds later.
        lost = snap.lost_reported_by_all(candidates)
        patience = LOST_QUIET if lost else self.reform_timeout
        if stragglers and quiet_for < patience:
            return patience - quiet_for
        if len(candidates) < self.max_nodes and snap.round is None and quiet_for < self.settle:
            return self.settle - quiet_for
        master = candidates[0]
        new_round = {
            "generation": snap.generation + 1,
            "members": [p.node_id for p in candidates],
            "master_addr": master.addr,
            "master_port": master.port,
            "excluded": stragglers if lost else [],
        }
        compare = [tx.Mod(self.round_key) == snap.round_revision]
        compare += [tx.Version(f"{self.prefix}nodes/{p.node_id}") > 0 for p in candidates]
        try:
            won = self.session.transaction(
                compare, [tx.Put(self.round_key, json.dumps(new_round).encode())]
            )
        except EtcdUnavailableError:
            return 0.5
        if won:
            log.info("rendezvous %s: closed round %d with %d nodes %s", self.run_id,
                     new_round["generation"], len(candidates), new_round["members"])
        return 0.05

    # -- while running -----------------------------------------------------------------------

    def reform_reason(self, current: Round) -> str | None:
        """Why the running round ``current`` must re-form now, or None.

        Never answers from a stale cache: while etcd is unreachable it returns None (training
        continues; a real loss is seen once etcd answers again).
        """
        if not self.session.connected:
            return None
        snap = self.snapshot()
        if snap.closed:
            return None
        if snap.round is None or snap.round.generation != current.generation:
            return f"round moved on to generation {snap.generation}"
        dead = snap.dead_members()
        if dead:
            return f"peer lost: {', '.join(dead)} (lease expired)"
        departing = snap.leaving_members()
        if departing:
            return f"member {', '.join(departing)} is leaving"
        leaving = [m for m in current.members if not snap.is_active(m)]
        if leaving:
            return f"member {', '.join(leaving)} is re-forming"
        newcomers = [p.node_id for p in snap.waiting()]
        if newcomers and current.world_size < self.max_nodes:
            return f"new peer waiting: {', '.join(newcomers)}"
        return None

    def num_nodes_waiting(self) -> int:
        snap = self.snapshot()
        return len([p for p in snap.waiting() if p.after >= snap.generation])

    def is_closed(self) -> bool:
        return self.snapshot().closed

    def completion(self) -> contract.Completion | None:
        """The job's completion record, read from etcd itself (not the watched cache)."""
        raw = self.session.get(contract.completion_key(self.run_id))
        if raw is None:
            return None
        try:
            return contract.Completion.from_json(raw)
        except ValueError as exc:
            log.warning("rendezvous %s: ignoring malformed completion record: %s", self.run_id,
                        exc)
            return None

    def complete(self, rnd: Round) -> contract.Completion | None:
        """Record that training reached its end in ``rnd``; returns the job's record.

        Atomic: written only while ``rnd`` is still the current round (its key's revision is
        the one this node ran in) and no record exists yet. Returns the record that stands
        afterwards (this node's or an earlier one), or None when ``rnd`` is no longer current:
        then nothing was written, because a newer round that did not finish exists.
        Raises EtcdUnavailableError while etcd cannot be reached.
        """
        key = contract.completion_key(self.run_id)
        raw_round = self.session.get(self.round_key)
        if raw_round is None:
            return self.completion()
        current = json.loads(raw_round)
        if int(current["generation"]) != rnd.generation or self.node_id not in current["members"]:
            return self.completion()
        record = contract.Completion(rnd.generation, rnd.members, self.node_id, time.time())
        compare = [tx.Value(self.round_key) == raw_round, tx.Version(key) == 0]
        if self.session.transaction(compare, [tx.Put(key, record.to_json().encode())]):
            log.info("rendezvous %s: training completed in round %d %s", self.run_id,
                     rnd.generation, list(rnd.members))
            return record
        return self.completion()

    def set_closed(self) -> None:
        """torch's ``set_closed``: training finished in the last round this node ran in."""
        snap = self.snapshot()
        if snap.round is not None and self.node_id in snap.round.members:
            r = snap.round
            self.complete(Round(r.generation, r.members, r.master_addr, r.master_port,
                                self.node_id))

    # -- fault attribution ---------------------------------------------------------------------

    def claim_fault(self, generation: int, first_exit: float) -> None:
        """Record when this node's training first failed in ``generation`` (wall clock)."""
        self.session.put(
            f"{self.prefix}faults/{generation}/{self.node_id}",
            json.dumps({"t": first_exit}).encode(),
            with_lease=True,
        )

    def fault_origin(self, generation: int, own: float | None = None) -> str | None:
        """The node with the earliest fault claim in ``generation`` (ties: lowest id).

        ``own``: this node's claim, counted even before the watch brought it back. The
        snapshot follows the watch, so right after ``claim_fault`` it may hold a peer's claim
        but not ours; two nodes whose processes failed together (a hang stalls every rank's
        heartbeat at once) would each name the other and neither count the failure."""
        snap = self.snapshot()
        claims = {k.split("/", 1)[1]: t for k, t in snap.faults.items()
                  if k.split("/", 1)[0] == str(generation)}
        if own is not None:
            claims[self.node_id] = own
        return min(claims, key=lambda n: (claims[n], n)) if claims else None
