"""``pods/exec`` over WebSocket: Kubernetes' remote-command channel protocol, server side.

What ``kubectl exec`` (1.30+) speaks first: a WebSocket upgrade of
``GET /api/v1/namespaces/NS/pods/NAME/exec?command=...&stdout=true&stderr=true[&stdin=true]
[&container=C]`` offering the subprotocols ``v5.channel.k8s.io`` .. ``v4.channel.k8s.io``.
Every binary message starts with its channel: 0 stdin (client to server), 1 stdout, 2 stderr,
3 the error channel (one ``metav1.Status`` when the command ends: Success, or Failure with
reason ``NonZeroExitCode`` and an ``ExitCode`` cause), 4 terminal resize; v5 adds the close
message ``[255, channel]`` by which the client half-closes stdin. After the status the server
closes the connection.

Who runs the command is the server's ``exec_source`` (the local kubelet): this module only
speaks the protocol. As with kube-apiserver, a pod or container that cannot take the command
is refused before the upgrade (400/404 with a Status, for a WebSocket or a SPDY request
alike); a command that cannot start fails after it, with an InternalError Status on the error
channel. Deliberate differences from kube-apiserver: no SPDY (kubectl falls back
to it only for servers that refuse the WebSocket upgrade; a SPDY request gets 400 naming the
supported protocols), no TTY (``tty=true`` is 400), and the v1-v3 text protocols are not
offered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import WSMsgType, web

from kube_emulator.apiserver import errors

log = logging.getLogger(__name__)

PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
STDIN, STDOUT, STDERR, ERROR, RESIZE = 0, 1, 2, 3, 4
CLOSE = 255  # v5: [255, channel] closes that channel
_CHUNK = 32 * 1024


@dataclass(frozen=True)
class ExecRequest:
    """What the client asked to run: in which pod and container (None: the default one, the
    first), the command (argv, no shell) and which streams it attaches."""

    namespace: str
    pod: str
    container: str | None
    command: list[str]
    stdin: bool
    stdout: bool
    stderr: bool


class ExecRefused(Exception):
    """The command cannot run (no such pod or container, pod not running); ``code`` is the
    HTTP status the API server answers with, before any upgrade."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ExecTarget(Protocol):
    """A running container that commands can be exec'd in."""

    async def exec(self, command: list[str], stdin: bool) -> asyncio.subprocess.Process:
        """Start ``command`` (stdin a pipe when asked, stdout and stderr pipes); OSError when
        it cannot start."""


# The container an ExecRequest names, or ExecRefused.
ExecSource = Callable[[ExecRequest], ExecTarget]


def parse_request(namespace: str, pod: str, query: Any) -> ExecRequest:
    """The ExecRequest of a query string (400 naming the parameter when it is unusable)."""
    command = [str(c) for c in query.getall("command", [])]
    if not command:
        raise errors.bad_request("you must specify at least 1 command (the command query "
                                 "parameter, once per argument)")
    if _flag(query, "tty"):
        raise errors.bad_request("tty=true is not supported by the local cluster (processes "
                                 "have no terminal): run kubectl exec without -t")
    request = ExecRequest(namespace, pod, query.get("container") or None, command,
                          _flag(query, "stdin"), _flag(query, "stdout"), _flag(query, "stderr"))
    if not (request.stdin or request.stdout or request.stderr):
        raise errors.bad_request("you must specify at least one of stdin, stdout, stderr")
    return request


def _flag(query: Any, name: str) -> bool:
    return str(query.get(name, "")).lower() in ("true", "1")


def exit_status(returncode: int) -> dict[str, Any]:
    """The error channel's Status for a command's exit (a signal N counts as 128+N, as a
    container runtime reports it)."""
    code = 128 - returncode if returncode < 0 else returncode
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    return {"metadata": {}, "status": "Failure",
            "message": f"command terminated with non-zero exit code: exit status {code}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}


async def serve(request: web.Request, exec_request: ExecRequest,
                source: ExecSource | None) -> web.StreamResponse:
    """Run ``exec_request`` through ``source`` and stream it over the upgraded connection."""
    if source is None:
        raise errors.bad_request("pods/exec is not available: this emulated cluster was "
                                 "started without a kubelet")
    try:
        target = source(exec_request)
    except ExecRefused as exc:
        raise errors.ApiError(exc.code, "BadRequest" if exc.code == 400 else "NotFound",
                              exc.message) from None
    ws = web.WebSocketResponse(protocols=PROTOCOLS, autoping=True)
    if not ws.can_prepare(request).ok:
        raise errors.bad_request(
            "the local cluster serves pods/exec over WebSocket only (subprotocols "
            f"{', '.join(PROTOCOLS)}); SPDY is not supported: use kubectl 1.30 or newer")
    await ws.prepare(request)
    try:
        process = await target.exec(exec_request.command, exec_request.stdin)
    except OSError as exc:
        failure = {"metadata": {}, "status": "Failure", "reason": "InternalError", "code": 500,
                   "message": f"error executing command in container: {exc}"}
        await ws.send_bytes(bytes([ERROR]) + json.dumps(failure).encode())
        await ws.close()
        return ws
    try:
        await _stream(ws, process, exec_request)
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    return ws


async def _stream(ws: web.WebSocketResponse, process: asyncio.subprocess.Process,
                  exec_request: ExecRequest) -> None:
    lock = asyncio.Lock()  # one frame at a time

    async def send(channel: int, data: bytes) -> None:
        async with lock:
            await ws.send_bytes(bytes([channel]) + data)

    async def pump(stream: asyncio.StreamReader | None, channel: int) -> None:
        if stream is None:
            return
        while chunk := await stream.read(_CHUNK):
            with contextlib.suppress(ConnectionResetError):
                await send(channel, chunk)

    outputs = asyncio.gather(pump(process.stdout, STDOUT), pump(process.stderr, STDERR))
    reader = asyncio.create_task(_read_client(ws, process, exec_request.stdin))
    try:
        await outputs
        returncode = await process.wait()
        with contextlib.suppress(ConnectionResetError):
            await send(ERROR, json.dumps(exit_status(returncode)).encode())
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await ws.close()


async def _read_client(ws: web.WebSocketResponse, process: asyncio.subprocess.Process,
                       stdin: bool) -> None:
    """Feed channel 0 to the process's stdin until the client closes it (v5 close message,
    or the connection ends); resize messages are read and ignored (no terminal)."""
    pipe = process.stdin if stdin else None
    async for message in ws:
        if message.type != WSMsgType.BINARY or not message.data:
            continue
        channel, data = message.data[0], message.data[1:]
        if channel == STDIN and pipe is not None and not pipe.is_closing():
            pipe.write(data)
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                await pipe.drain()
        elif channel == CLOSE and data[:1] == bytes([STDIN]) and pipe is not None:
            pipe.close()
    if pipe is not None and not pipe.is_closing():
        pipe.close()
