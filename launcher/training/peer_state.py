"""Serve a training process's in-memory state to the job's joiners, and fetch it.

Why a socket of our own rather than a broadcast over the new process group: the state must
reach only the job's own members. A process group's store and connections accept anyone who can
reach the port; this server answers only a client that proves it holds the job's secret
(``launcher.inplace.proof``: HMAC-SHA256 over a fresh 32-byte nonce and the generation), and
it listens on the pod's own address, never on every interface. torchft's peer-checkpoint server
does neither.

Wire format (one request per connection): server -> client ``nonce`` (32 bytes); client ->
server ``proof`` (32 bytes); server -> client ``b"OK"`` + payload length (u64, big endian) +
payload, or ``b"NO"`` and close. The payload is one ``torch.save`` of the state dict, made once
per generation by the serving rank, however many joiners fetch it.
"""

from __future__ import annotations

import hmac
import io
import logging
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


def serialize(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def deserialize(payload: bytes | memoryview) -> dict[str, Any]:
    state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"peer state is a {type(state).__name__}, not a dict")
    return state


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], min(n - got, _CHUNK))
        if k == 0:
            raise ConnectionError(f"peer closed the connection after {got} of {n} bytes")
        got += k
    return bytes(buf)


class StateServer:
    """Serves one payload to authenticated clients until ``close``; one thread per client."""

    def __init__(self, host: str, secret: bytes, generation: int, payload: bytes) -> None:
        self.secret = secret
        self.generation = generation
        self.payload = payload
        self.refused = 0
        self._sock = socket.create_server((host, 0))
        self._sock.settimeout(0.2)
        self.address = f"{host}:{self._sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="peer-state", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
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
                conn.sendall(b"OK" + _LEN.pack(len(self.payload)))
                conn.sendall(self.payload)
            except OSError as exc:
                log.info("peer-state server: client went away: %r", exc)

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(timeout=2)


def fetch(address: str, secret: bytes, generation: int, timeout: float = 60.0) -> bytes:
    """The payload served at ``address``; raises ``PeerStateRefused`` when the proof is refused."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        nonce = _recv_exact(sock, _NONCE)
        sock.sendall(proof(secret, nonce, generation))
        answer = _recv_exact(sock, 2)
        if answer != b"OK":
            raise PeerStateRefused(f"peer {address} refused the state request for generation "
                                   f"{generation}: this process does not hold the job's secret "
                                   f"({answer!r})")
        (length,) = _LEN.unpack(_recv_exact(sock, _LEN.size))
        return _recv_exact(sock, length)
