"""Atomic, self-verifying checkpoint files and a directory of the last K of them.

File format: the zip archive ``torch.save`` writes, followed by a 24-byte trailer
``<payload length: u64><mode: u32><crc32: u32><b"ELCKPT02">`` (little endian). ``torch.load``
ignores trailing bytes (it finds the zip directory by scanning from the end), so loading a
verified file is a plain ``torch.load``.

Integrity without an extra pass at save time: ``torch.save`` already stores a CRC32 of every
record in the zip directory (``torch.utils.serialization.config.save.compute_crc32``, on by
default). In mode ``RECORDS`` the trailer's CRC covers the zip directory (where those CRCs
live), and ``verify`` checks every record's bytes against its CRC, so a flipped bit anywhere in
the payload is found. If the user switched torch's CRCs off, the writer computes a CRC32 of the
whole payload as it streams (mode ``PAYLOAD``), slower but equally strict.

Atomicity: a checkpoint is written to a temporary file in the *same* directory, fsynced, renamed
to its final name (atomic on POSIX within a file system), and the directory is fsynced so the
rename itself survives a power loss. A process killed at any point leaves either no new file or
a complete one; older checkpoints are pruned only after the new one is durable. While writing,
a helper thread asks the kernel to start writeback every 8 MiB (Linux ``sync_file_range``, the way
databases bound their fsync latency), so the final fsync waits for the tail only rather than for
the whole file. Every file is verified before it is loaded: a wrong size, a missing trailer
(truncation) or a CRC mismatch (corruption) makes ``load_latest`` skip it with a warning.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import queue
import re
import struct
import threading
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

log = logging.getLogger(__name__)

_MAGIC = b"ELCKPT02"
_TRAILER = struct.Struct("<QII8s")
_MODE_RECORDS = 1
_MODE_PAYLOAD = 2
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature ... file name length, extra length
_LOCAL_SIGNATURE = b"PK\x03\x04"
_NAME = re.compile(r"^ckpt-(\d{12})\.pt$")
_TMP_PREFIX = ".tmp-ckpt-"
_WRITEBACK_BYTES = 8 << 20
_SYNC_FILE_RANGE_WRITE = 2


class CorruptCheckpointError(ValueError):
    """A checkpoint file is truncated, lacks our trailer, or fails a CRC check."""


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        func = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (AttributeError, OSError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func  # type: ignore[no-any-return]


_sync_file_range = _load_sync_file_range()


def _torch_writes_record_crcs() -> bool:
    try:
        from torch.utils.serialization import config
    except ImportError:
        return False
    return bool(getattr(config.save, "compute_crc32", False))


class _DurableWriter:
    """File object for ``torch.save``: counts bytes, starts writeback early, optionally CRCs.

    Writeback requests go to a helper thread (``sync_file_range`` can block while the device
    queue is full; ctypes releases the GIL), so serialisation never waits for the disk. ``close``
    must be called before the file is closed: it joins the thread.
    """

    def __init__(self, raw: BinaryIO, *, checksum: bool) -> None:
        self._raw = raw
        self._fd = raw.fileno()
        self._checksum = checksum
        self.crc = 0
        self.size = 0
        self._scheduled = 0
        self._ranges: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        if _sync_file_range is not None:
            self._thread = threading.Thread(target=self._writeback, name="ckpt-writeback",
                                            daemon=True)
            self._thread.start()

    def _writeback(self) -> None:
        assert _sync_file_range is not None
        while (item := self._ranges.get()) is not None:
            # Only a hint (asynchronous, errors ignored): durability comes from the fsync.
            _sync_file_range(self._fd, item[0], item[1], _SYNC_FILE_RANGE_WRITE)

    def write(self, data: bytes | memoryview) -> int:
        written = self._raw.write(data)
        if self._checksum:
            self.crc = zlib.crc32(data, self.crc)
        self.size += len(data)
        if self._thread is not None and self.size - self._scheduled >= _WRITEBACK_BYTES:
            self._raw.flush()
            self._ranges.put((self._scheduled, self.size - self._scheduled))
            self._scheduled = self.size
        return written

    def flush(self) -> None:
        self._raw.flush()

    def close(self) -> None:
        """Stop the writeback thread (the descriptor stays open)."""
        if self._thread is not None:
            self._ranges.put(None)
            self._thread.join()
            self._thread = None


def write_atomic(path: str | os.PathLike[str], state: Mapping[str, Any]) -> int:
    """Save ``state`` to ``path`` atomically and durably; returns the file size in bytes."""
    final = Path(path)
    tmp = final.with_name(f"{_TMP_PREFIX}{final.name}.{os.getpid()}")
    mode = _MODE_RECORDS if _torch_writes_record_crcs() else _MODE_PAYLOAD
    try:
        with open(tmp, "w+b") as raw:
            writer = _DurableWriter(raw, checksum=mode == _MODE_PAYLOAD)
            try:
                torch.save(dict(state), writer)
            finally:
                writer.close()
            raw.flush()
            crc = writer.crc
            if mode == _MODE_RECORDS:
                with mmap.mmap(raw.fileno(), writer.size, access=mmap.ACCESS_READ) as view:
                    crc = zlib.crc32(view[zipfile.ZipFile(view).start_dir:])
            raw.seek(writer.size)
            raw.write(_TRAILER.pack(writer.size, mode, crc, _MAGIC))
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
        if size <= _TRAILER.size:
            raise CorruptCheckpointError(f"{path}: {size} bytes, too short for a checkpoint "
                                         "(truncated)")
        f.seek(size - _TRAILER.size)
        length, mode, crc, magic = _TRAILER.unpack(f.read(_TRAILER.size))
        if magic != _MAGIC or length != size - _TRAILER.size:
            raise CorruptCheckpointError(f"{path}: no valid trailer (truncated, or not written "
                                         "by launcher.training.checkpoint)")
        with mmap.mmap(f.fileno(), length, access=mmap.ACCESS_READ) as view:
            if mode == _MODE_PAYLOAD:
                _expect_crc(path, "payload", zlib.crc32(view), crc)
            elif mode == _MODE_RECORDS:
                _verify_records(path, view, length, crc)
            else:
                raise CorruptCheckpointError(f"{path}: unknown integrity mode {mode}")


def _verify_records(path: str | os.PathLike[str], view: mmap.mmap, length: int,
                    directory_crc: int) -> None:
    try:
        archive = zipfile.ZipFile(view)  # type: ignore[arg-type]
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise CorruptCheckpointError(f"{path}: unreadable zip directory ({exc})") from None
    _expect_crc(path, "zip directory", zlib.crc32(view[archive.start_dir:length]), directory_crc)
    data = memoryview(view)
    try:
        for info in archive.infolist():
            offset = info.header_offset
            signature, name_len, extra_len = _LOCAL_HEADER.unpack_from(view, offset)
            start = offset + _LOCAL_HEADER.size + name_len + extra_len
            end = start + info.compress_size
            if (signature != _LOCAL_SIGNATURE or info.compress_type != zipfile.ZIP_STORED
                    or end > archive.start_dir):
                raise CorruptCheckpointError(f"{path}: record {info.filename} is malformed")
            _expect_crc(path, f"record {info.filename}", zlib.crc32(data[start:end]), info.CRC)
    except struct.error:
        raise CorruptCheckpointError(f"{path}: record header out of bounds") from None
    finally:
        data.release()


def _expect_crc(path: str | os.PathLike[str], what: str, actual: int, recorded: int) -> None:
    if actual != recorded:
        raise CorruptCheckpointError(f"{path}: CRC32 of {what} is {actual:#010x}, recorded "
                                     f"{recorded:#010x} (corrupt)")


def read_verified(path: str | os.PathLike[str], *, weights_only: bool = True,
                  mmap_tensors: bool = True) -> dict[str, Any]:
    """Verify ``path`` and load it; never returns data from a file that failed verification.

    With ``mmap_tensors`` (default) the tensors are private, copy-on-write mappings of the
    file: verification has just read every byte into the page cache, so mapping instead of
    copying again makes a verified load cheaper than a plain ``torch.load``. Checkpoint files
    are never modified after their rename, so the mapping cannot change under the caller.
    """
    verify(path)
    state = torch.load(path, map_location="cpu", weights_only=weights_only, mmap=mmap_tensors)
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
