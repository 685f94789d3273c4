"""Build, use and tear down one generation's process group; abort it fast when a peer is gone.

One interface, two backends:
- gloo (CPU): a dead peer's sockets are closed by its kernel, so the survivors' collective fails
  at once with a connection error; tearing the group down closes this process's sockets too, so
  ranks that were only waiting on *us* fail at once as well (the failure cascades instead of
  waiting for a timeout).
- nccl (GPU): a collective on a dead peer does not fail by itself; it hangs until the watchdog
  timeout. So every collective runs asynchronously and ``wait`` polls it; when the caller says
  the group is dead (the rendezvous moved on, or the deadline passed) ``abort`` calls
  ``ProcessGroupNCCL.abort`` (``_abort_process_group``), which aborts the communicators and
  unblocks the stream, and a new group is created from scratch. Without that call the backend
  cannot abort, and ``can_abort`` is False: the agent then takes the restart path.

Each generation's group gets a fresh ``TCPStore`` hosted by that generation's rank 0 (always a
survivor when there is one), used only while the group forms: the death of the process that
hosted an earlier generation's store costs nothing.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed import distributed_c10d as c10d

log = logging.getLogger(__name__)

# The store counter every rank of a generation adds 1 to when it arrives (see ``init``).
ARRIVED = "elastic/arrived"


class CollectiveAborted(RuntimeError):
    """A collective failed or was aborted: a peer is gone; the step must be discarded."""


class Communicator:
    """The process group of the current generation (the default group, so user code that calls
    ``dist.get_rank()`` keeps working)."""

    def __init__(self, backend: str, local_rank: int = 0, timeout: float = 60.0) -> None:
        if backend not in ("gloo", "nccl"):
            raise ValueError(f"backend {backend!r}: the in-place path supports gloo and nccl")
        self.backend = backend
        self.local_rank = local_rank
        self.timeout = timeout
        self.store: dist.TCPStore | None = None
        self.rank = 0
        self.world_size = 1

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else \
            torch.device("cpu")

    @property
    def can_abort(self) -> bool:
        """Whether a hung collective can be cut short (else: restart path)."""
        if self.backend == "gloo":
            return True
        return dist.is_nccl_available() and hasattr(c10d, "_abort_process_group")

    def init(self, rank: int, world_size: int, master_addr: str, master_port: int,
             abandoned: Callable[[], bool] = lambda: False) -> None:
        """Form the group; rank 0 hosts the generation's store.

        Every wait is polled, and ``abandoned()`` (the rendezvous moved on: a member of this
        round will never come) raises ``CollectiveAborted``, like a failed store connection:
        a round that cannot form costs its members a poll, not the store timeout. Only
        ``init_process_group`` itself blocks, and only once every rank has arrived at the
        store (so it has nobody left to wait for)."""
        try:
            if rank != 0:
                _wait_listening(master_addr, master_port, self.timeout, abandoned)
            self.store = dist.TCPStore(master_addr, master_port, world_size,
                                       is_master=rank == 0,
                                       timeout=timedelta(seconds=self.timeout),
                                       wait_for_workers=False)
            store = self.store
            store.add(ARRIVED, 1)
            self._poll(lambda: store.add(ARRIVED, 0) >= world_size, abandoned,
                       f"generation group of {world_size} abandoned before every rank arrived")
        except dist.DistError as exc:  # the store's host is gone (its round was abandoned)
            self.store = None
            raise CollectiveAborted(str(exc).splitlines()[0]) from exc
        kwargs = {}
        if self.backend == "nccl":
            torch.cuda.set_device(self.device)
            kwargs["device_id"] = self.device
        dist.init_process_group(self.backend, store=self.store, rank=rank,
                                world_size=world_size, timeout=timedelta(seconds=self.timeout),
                                **kwargs)
        self.rank, self.world_size = rank, world_size

    def get(self, key: str, abandoned: Callable[[], bool]) -> str:
        """The value a peer sets under ``key`` in this generation's store; gives up when
        ``abandoned()`` (a plain ``store.get`` blocks for the timeout when the setter is gone)."""
        assert self.store is not None
        store = self.store
        try:
            self._poll(lambda: store.check([key]), abandoned,
                       f"{key} never came: the round was abandoned")
            return store.get(key).decode()
        except dist.DistError as exc:  # the store's host is gone
            raise CollectiveAborted(str(exc).splitlines()[0]) from exc

    def _poll(self, done: Callable[[], bool], abandoned: Callable[[], bool], what: str) -> None:
        """Poll ``done()`` every 2 ms; ``CollectiveAborted(what)`` once ``abandoned()`` or after
        the timeout."""
        deadline = time.monotonic() + self.timeout
        while not done():
            if abandoned() or time.monotonic() > deadline:
                raise CollectiveAborted(what)
            time.sleep(0.002)

    def all_reduce(self, tensor: torch.Tensor, is_dead: Callable[[], bool]) -> None:
        """Sum ``tensor`` over the group; raise ``CollectiveAborted`` when it fails, when
        ``is_dead()`` turns True while it waits, or after the timeout."""
        self.wait(dist.all_reduce(tensor, async_op=True), is_dead)

    def wait(self, work: dist.Work, is_dead: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.timeout
        pause = 0.0
        try:
            while not work.is_completed():
                if is_dead() or time.monotonic() > deadline:
                    raise CollectiveAborted("collective abandoned: the group is re-forming "
                                            "or the collective timed out")
                time.sleep(pause)
                pause = min(pause * 2 + 5e-5, 0.005)
            work.wait()
        except RuntimeError as exc:  # gloo: connection reset / closed by peer
            if isinstance(exc, CollectiveAborted):
                raise
            raise CollectiveAborted(str(exc).splitlines()[0]) from exc

    def abort(self) -> None:
        """Tear the group down after a failure without waiting for peers (also the store of
        a formation that was abandoned before its group existed)."""
        if not dist.is_initialized():
            self.store = None
            return
        if self.backend == "nccl":
            c10d._abort_process_group()
        else:
            try:
                dist.destroy_process_group()
            except RuntimeError as exc:
                log.info("destroying the failed gloo group: %r", exc)
        self.store = None

    def destroy(self) -> None:
        """Orderly teardown (every rank leaves this generation at the same step)."""
        if dist.is_initialized():
            dist.destroy_process_group()
        self.store = None


def _wait_listening(host: str, port: int, timeout: float, abandoned: Callable[[], bool]
                    ) -> None:
    """Return once ``host:port`` accepts connections. TCPStore's client retries a refused
    connection only after a back-off of up to a second; the new rank 0 opens its store a few
    milliseconds after the others look for it, so polling here keeps a regroup short."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=1.0).close()
            return
        except OSError:
            if abandoned():
                raise CollectiveAborted(f"the store at {host}:{port} never opened: its "
                                        "round was abandoned") from None
            if time.monotonic() > deadline:
                return  # let TCPStore report the failure with its own message
            time.sleep(0.002)
