"""Atomic, self-verifying checkpoint files and a directory of the last K of them.

File format: the bytes ``torch.save`` writes, followed by a 20-byte trailer
``<payload length: u64><crc32 of payload: u32><b"ELCKPT01">`` (little endian). ``torch.load``
ignores the trailing bytes (the zip directory is located from the end with a scan), so loading
a verified file is a plain ``torch.load``.

Atomicity: a checkpoint is written to a temporary file in the *same* directory, flushed and
fsynced, renamed to its final name (atomic on POSIX within a file system), and then the directory
is fsynced so the rename itself survives a power loss. A process killed at any point leaves
either no new file or a complete one; the previous checkpoints are never touched until the new
one is durable. Belt and braces, every file is verified before it is loaded: a wrong size, a
missing trailer (truncation) or a checksum mismatch (corruption) makes ``latest`` skip the file
with a warning, so a bad file is never loaded.
"""

from __future__ import annotations

import logging
import mmap
import os
import re
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

_MAGIC = b"ELCKPT01"
_TRAILER = struct.Struct("<QI8s")
_NAME = re.compile(r"^ckpt-(\d{12})\.pt$")
_TMP_PREFIX = ".tmp-ckpt-"


class CorruptCheckpointError(ValueError):
    """A checkpoint file is truncated, lacks our trailer, or fails its checksum."""


class _ChecksummingWriter:
    """File object for ``torch.save`` that computes the CRC32 of what passes through it."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self.crc = 0
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        self.crc = zlib.crc32(data, self.crc)
        self.size += len(data)
        return int(self._raw.write(data))

    def flush(self) -> None:
        self._raw.flush()


def write_atomic(path: str | os.PathLike[str], state: Mapping[str, Any]) -> int:
    """Save ``state`` to ``path`` atomically and durably; returns the file size in bytes."""
    final = Path(path)
    tmp = final.with_name(f"{_TMP_PREFIX}{final.name}.{os.getpid()}")
    try:
        with open(tmp, "wb") as raw:
            writer = _ChecksummingWriter(raw)
            torch.save(dict(state), writer)
            raw.write(_TRAILER.pack(writer.size, writer.crc, _MAGIC))
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(final.parent)
    return writer.size + _TRAILER.size


def verify(path: str | os.PathLike[str]) -> None:
    """Raise ``CorruptCheckpointError`` unless ``path`` is a complete, intact checkpoint."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < _TRAILER.size:
            raise CorruptCheckpointError(f"{path}: {size} bytes, shorter than the trailer "
                                         "(truncated)")
        f.seek(size - _TRAILER.size)
        length, crc, magic = _TRAILER.unpack(f.read(_TRAILER.size))
        if magic != _MAGIC or length != size - _TRAILER.size:
            raise CorruptCheckpointError(f"{path}: no valid trailer (truncated or not written "
                                         "by launcher.training.checkpoint)")
        if length == 0:
            raise CorruptCheckpointError(f"{path}: empty payload")
        with mmap.mmap(f.fileno(), length, access=mmap.ACCESS_READ) as view:
            actual = zlib.crc32(view)
    if actual != crc:
        raise CorruptCheckpointError(f"{path}: checksum {actual:#010x} != recorded {crc:#010x} "
                                     "(corrupt)")


def read_verified(path: str | os.PathLike[str], *, weights_only: bool = True) -> dict[str, Any]:
    """Verify ``path`` and load it; never returns data from a file that failed verification."""
    verify(path)
    state = torch.load(path, map_location="cpu", weights_only=weights_only)
    if not isinstance(state, dict):
        raise CorruptCheckpointError(f"{path}: payload is {type(state).__name__}, not a dict")
    return state


@dataclass(frozen=True)
class CheckpointFile:
    """A checkpoint in the directory, named by the optimizer step it was taken after."""

    step: int
    path: Path


class CheckpointDir:
    """The checkpoints of one job: ``ckpt-<step>.pt`` files, newest ``keep`` retained.

    Only one process (global rank 0) writes; any process may read.
    """

    def __init__(self, directory: str | os.PathLike[str], *, keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"keep={keep} must be >= 1 (the latest checkpoint is always kept)")
        self.directory = Path(directory)
        self.keep = keep

    def files(self) -> list[CheckpointFile]:
        """Checkpoints by final name, newest first (not verified)."""
        if not self.directory.is_dir():
            return []
        found = [CheckpointFile(int(m.group(1)), self.directory / m.group(0))
                 for m in (_NAME.match(p.name) for p in self.directory.iterdir()) if m]
        return sorted(found, key=lambda c: c.step, reverse=True)

    def path_for(self, step: int) -> Path:
        """Where the checkpoint taken after ``step`` lives."""
        return self.directory / f"ckpt-{step:012d}.pt"

    def save(self, step: int, state: Mapping[str, Any]) -> Path:
        """Write the checkpoint of ``step`` atomically, then prune to the newest ``keep``."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path_for(step)
        write_atomic(path, state)
        for old in self.files()[self.keep:]:
            old.path.unlink(missing_ok=True)
        return path

    def load_latest(self, *, weights_only: bool = True
                    ) -> tuple[CheckpointFile, dict[str, Any]] | None:
        """The newest checkpoint that passes verification, loaded; bad ones are logged and
        skipped (never loaded). ``None`` when there is no valid checkpoint."""
        for candidate in self.files():
            try:
                return candidate, read_verified(candidate.path, weights_only=weights_only)
            except (CorruptCheckpointError, OSError) as exc:
                log.warning("skipping checkpoint %s: %s", candidate.path, exc)
        return None

    def remove_stale_temporaries(self) -> None:
        """Delete temporaries left by a writer killed mid-save (call when no writer runs)."""
        if self.directory.is_dir():
            for path in self.directory.glob(f"{_TMP_PREFIX}*"):
                path.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
