"""Serve a training process's in-memory state to the job's joiners, and fetch it.

Why a socket of our own rather than a broadcast over the new process group: the state must
reach only the job's own members. A process group's store and connections accept anyone who can
reach the port; this server answers only a client that proves it holds the job's secret
(``launcher.inplace.proof``: HMAC-SHA256 over a fresh 32-byte nonce and the generation), and
it listens on the pod's own address, never on every interface. torchft's peer-checkpoint server
does neither.

Wire format (one request per connection): server -> client ``nonce`` (32 bytes); client ->
server ``proof`` (32 bytes); server -> client ``b"NO"`` and close, or ``b"OK"``, then the
*skeleton* (the state with every tensor replaced by ``(TENSOR, index, dtype, shape)``, saved
with ``torch.save``: only plain values, so it loads with ``weights_only=True``) and the raw
bytes of every tensor, each padded to 64 bytes; lengths are u64 big endian.

Why raw bytes rather than one ``torch.save`` of the whole state: the server sends straight
from the tensors' memory (no serialised copy; the serving rank does not step until every
joiner has received, see ``launcher.training.inplace``), and the client receives into one
buffer and takes views of it (no parse, no copy): on a 400 MB state that is the difference
between seconds and a fraction of one (measured: see docs/decisions.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import hmac
import io
import logging
import math
import os
import socket
import struct
import threading
from typing import Any

import torch

from launcher.inplace import proof

log = logging.getLogger(__name__)

_NONCE = 32
_LEN = struct.Struct(">Q")
_CHUNK = 4 << 20


class PeerStateRefused(RuntimeError):
    """The serving peer refused the proof (wrong or missing secret, or another generation)."""


TENSOR = "__tensor__"
_ALIGN = 64


def _pad(n: int) -> int:
    return -n % _ALIGN


def _strip(value: Any, tensors: list[torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        tensors.append(t)
        return (TENSOR, len(tensors) - 1, str(t.dtype).removeprefix("torch."), tuple(t.shape))
    if isinstance(value, dict):
        return {k: _strip(v, tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_strip(v, tensors) for v in value)
    return value


def _dress(value: Any, views: list[torch.Tensor]) -> Any:
    if isinstance(value, tuple) and len(value) == 4 and value[0] == TENSOR:
        return views[value[1]]
    if isinstance(value, dict):
        return {k: _dress(v, views) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_dress(v, views) for v in value)
    return value


def _specs(skeleton: Any, found: list[tuple[int, str, tuple[int, ...]]]) -> None:
    if isinstance(skeleton, tuple) and len(skeleton) == 4 and skeleton[0] == TENSOR:
        found.append((skeleton[1], skeleton[2], skeleton[3]))
    elif isinstance(skeleton, dict):
        for v in skeleton.values():
            _specs(v, found)
    elif isinstance(skeleton, (list, tuple)):
        for v in skeleton:
            _specs(v, found)


def _memory(t: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor, without a copy."""
    n = t.numel() * t.element_size()
    return memoryview((ctypes.c_char * n).from_address(t.data_ptr())).cast("B")


class Payload:
    """A state dict prepared for sending: its skeleton and references to its tensors."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.tensors: list[torch.Tensor] = []
        buffer = io.BytesIO()
        torch.save(_strip(state, self.tensors), buffer)
        self.skeleton = buffer.getvalue()
        self.size = sum(t.numel() * t.element_size() + _pad(t.numel() * t.element_size())
                        for t in self.tensors)

    def send(self, sock: socket.socket) -> None:
        sock.sendall(_LEN.pack(len(self.skeleton)) + self.skeleton + _LEN.pack(self.size))
        for t in self.tensors:
            n = t.numel() * t.element_size()
            if n:
                sock.sendall(_memory(t))
            sock.sendall(b"\0" * _pad(n))


def _receive(sock: socket.socket) -> dict[str, Any]:
    (length,) = _LEN.unpack(_recv_exact(sock, _LEN.size))
    skeleton = torch.load(io.BytesIO(_recv_exact(sock, length)), weights_only=True)
    (size,) = _LEN.unpack(_recv_exact(sock, _LEN.size))
    buffer = torch.empty(size, dtype=torch.uint8)
    if size:
        _recv_into(sock, _memory(buffer))
    specs: list[tuple[int, str, tuple[int, ...]]] = []
    _specs(skeleton, specs)
    views: list[torch.Tensor] = [torch.empty(0)] * len(specs)
    offset = 0
    for index, dtype_name, shape in sorted(specs):
        dtype = getattr(torch, dtype_name)
        n = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        views[index] = buffer[offset:offset + n].view(dtype).reshape(shape)
        offset += n + _pad(n)
    state = _dress(skeleton, views)
    if not isinstance(state, dict):
        raise ValueError(f"peer state is a {type(state).__name__}, not a dict")
    return state


def _recv_into(sock: socket.socket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        k = sock.recv_into(view[got:], min(len(view) - got, _CHUNK))
        if k == 0:
            raise ConnectionError(f"peer closed the connection after {got} of {len(view)} bytes")
        got += k


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    _recv_into(sock, memoryview(buf))
    return bytes(buf)


class StateServer:
    """Serves one payload to authenticated clients until ``close``; one thread per client."""

    def __init__(self, host: str, secret: bytes, generation: int, payload: Payload) -> None:
        self.secret = secret
        self.generation = generation
        self.payload = payload
        self.refused = 0
        self._sock = socket.create_server((host, 0))
        self.address = f"{host}:{self._sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="peer-state", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(30.0)
                nonce = os.urandom(_NONCE)
                conn.sendall(nonce)
                claimed = _recv_exact(conn, 32)
                if not hmac.compare_digest(claimed, proof(self.secret, nonce, self.generation)):
                    self.refused += 1
                    log.warning("peer-state server (generation %d): refused a client without "
                                "the job's secret", self.generation)
                    conn.sendall(b"NO")
                    return
                conn.sendall(b"OK")
                self.payload.send(conn)
            except OSError as exc:
                log.info("peer-state server: client went away: %r", exc)

    def close(self) -> None:
        """Stop at once: ``shutdown`` wakes the blocked ``accept`` (a plain close does not)."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(timeout=2)


def fetch(address: str, secret: bytes, generation: int, timeout: float = 60.0
          ) -> dict[str, Any]:
    """The state served at ``address``; raises ``PeerStateRefused`` when the proof is refused."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        nonce = _recv_exact(sock, _NONCE)
        sock.sendall(proof(secret, nonce, generation))
        answer = _recv_exact(sock, 2)
        if answer != b"OK":
            raise PeerStateRefused(f"peer {address} refused the state request for generation "
                                   f"{generation}: this process does not hold the job's secret "
                                   f"({answer!r})")
        return _receive(sock)
