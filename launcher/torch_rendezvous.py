"""torch adapter: the etcd v3 rendezvous as a ``RendezvousHandler`` named ``"etcd-v3"``.

Importing this module registers the backend in torch's ``rendezvous_handler_registry``, so torch
code (and torchrun, through the ``torchrun.handlers`` entry point ``entry_point``) can create it
with ``RendezvousParameters(backend="etcd-v3", endpoint="host:2379", ...)``. Our own agent
(``launcher.agent``) uses ``EtcdRendezvous`` directly: torch's agent dies on grow.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

from torch.distributed import PrefixStore, Store, TCPStore
from torch.distributed.elastic.rendezvous import (
    RendezvousClosedError,
    RendezvousConnectionError,
    RendezvousHandler,
    RendezvousInfo,
    RendezvousParameters,
    RendezvousStoreInfo,
    RendezvousTimeoutError,
    rendezvous_handler_registry,
)

from launcher import contract
from launcher import etcd_rendezvous as core
from launcher.etcd_client import security_from_files
from launcher.etcd_rendezvous import (
    BACKEND_NAME,
    DEFAULT_JOIN_TIMEOUT,
    DEFAULT_LEASE_TTL,
    DEFAULT_REFORM_TIMEOUT,
    DEFAULT_SETTLE,
    EtcdRendezvous,
    Round,
)
from launcher.etcd_session import EtcdSession, EtcdUnavailableError


class EtcdV3RendezvousHandler(RendezvousHandler):
    """torch ``RendezvousHandler`` over ``EtcdRendezvous``.

    Each round gets a TCPStore for torch's agent, hosted by group rank 0 on a fresh port it
    publishes at ``P/stores/<generation>``; ``bootstrap_store_info`` carries the round's
    MASTER_ADDR/MASTER_PORT for the training processes (a different port).
    """

    def __init__(self, rdzv: EtcdRendezvous, join_timeout: float) -> None:
        self._rdzv = rdzv
        self._join_timeout = join_timeout
        self._store: Store | None = None  # the current round's; the previous one is released

    @property
    def rendezvous(self) -> EtcdRendezvous:
        return self._rdzv

    def get_backend(self) -> str:
        return BACKEND_NAME

    def next_rendezvous(self) -> RendezvousInfo:
        try:
            rnd = self._rdzv.next_round(self._join_timeout)
            store = self._round_store(rnd)
        except EtcdUnavailableError as exc:
            raise RendezvousConnectionError(str(exc)) from exc
        except core.RendezvousClosedError as exc:
            raise RendezvousClosedError(str(exc)) from exc
        except core.RendezvousTimeoutError as exc:
            raise RendezvousTimeoutError(str(exc)) from exc
        info = RendezvousStoreInfo(rnd.master_addr, rnd.master_port)
        return RendezvousInfo(store, rnd.rank, rnd.world_size, info)

    def _round_store(self, rnd: Round) -> Store:
        key = f"{self._rdzv.prefix}stores/{rnd.generation}"
        session = self._rdzv.session
        timeout = self._join_timeout
        if rnd.rank == 0:
            server = TCPStore(self._rdzv.local_addr, 0, rnd.world_size, True,
                              wait_for_workers=False)
            self._store = server
            session.put(key, json.dumps([self._rdzv.local_addr, server.port]).encode())
            base: Store = server
        else:
            deadline = time.monotonic() + timeout
            version = -1
            while (entry := session.view()[1].get(key)) is None:
                if time.monotonic() > deadline:
                    raise RendezvousTimeoutError(f"no store published at {key} in {timeout}s")
                version = session.wait_change(version, 1.0)
            addr, port = json.loads(entry.value)
            base = TCPStore(addr, int(port), rnd.world_size, False)
            self._store = base
        return PrefixStore(f"/torchelastic/{rnd.generation}", base)

    def is_closed(self) -> bool:
        return self._rdzv.is_closed()

    def set_closed(self) -> None:
        self._rdzv.set_closed()

    def num_nodes_waiting(self) -> int:
        return self._rdzv.num_nodes_waiting()

    def get_run_id(self) -> str:
        return self._rdzv.run_id

    def shutdown(self) -> bool:
        self._rdzv.session.close(revoke=True)
        return True


def create_handler(params: RendezvousParameters) -> EtcdV3RendezvousHandler:
    """torch registry entry point: ``RendezvousParameters`` -> handler.

    Extra ``--rdzv-conf`` keys: ``lease_ttl`` (s, default 2), ``settle`` (s, default 1),
    ``reform_timeout`` (s, default 30), ``join_timeout`` (s, default 600), ``node_id``, and
    for a secured etcd ``credentials_dir`` (default ``$ELASTIC_RDZV_CREDENTIALS_DIR``), ``ca_file``,
    ``cert_file``, ``key_file``, ``user``, ``password_file``: the launcher's ``--rdzv-*``.
    """
    conf: dict[str, Any] = params.config
    security = security_from_files(
        ca_file=conf.get("ca_file"), cert_file=conf.get("cert_file"),
        key_file=conf.get("key_file"), user=conf.get("user"),
        password_file=conf.get("password_file"),
        credentials_dir=conf.get("credentials_dir",
                                 os.environ.get(contract.PodEnv.RDZV_CREDENTIALS_DIR)),
        hint=os.environ.get(contract.PodEnv.RDZV_SECRET, ""))
    local_addr = params.local_addr or socket.gethostname()
    node_id = str(conf.get("node_id") or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}")
    session = EtcdSession(
        params.endpoint, contract.etcd_prefix(params.run_id),
        lease_ttl=int(conf.get("lease_ttl", DEFAULT_LEASE_TTL)), name=node_id,
        security=security,
    ).start()
    rdzv = EtcdRendezvous(
        session, params.run_id, node_id, params.min_nodes, params.max_nodes, local_addr,
        settle=float(conf.get("settle", DEFAULT_SETTLE)),
        reform_timeout=float(conf.get("reform_timeout", DEFAULT_REFORM_TIMEOUT)),
    )
    return EtcdV3RendezvousHandler(rdzv, float(conf.get("join_timeout", DEFAULT_JOIN_TIMEOUT)))


def entry_point() -> Callable[[RendezvousParameters], RendezvousHandler]:
    """For the ``torchrun.handlers`` entry-point group (torch calls it, then registers)."""
    return create_handler


def register() -> None:
    """Register ``"etcd-v3"`` with torch's handler registry (idempotent)."""
    rendezvous_handler_registry.register(BACKEND_NAME, create_handler)


register()
