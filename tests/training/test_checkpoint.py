"""Atomic, verified checkpoints: corrupt and half-written files are never loaded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from launcher.training import (
    CheckpointDir,
    CorruptCheckpointError,
    read_verified,
    verify,
    write_atomic,
)

REPO = Path(__file__).resolve().parents[2]


def _state(step: int) -> dict[str, object]:
    return {"step": step, "weights": torch.full((256,), float(step))}


def test_roundtrip_and_keep_last_k(tmp_path: Path) -> None:
    ckpts = CheckpointDir(tmp_path, keep=2)
    for step in (5, 10, 15):
        ckpts.save(step, _state(step))
    assert [c.step for c in ckpts.files()] == [15, 10]
    found = ckpts.load_latest()
    assert found is not None and found[0].step == 15
    assert torch.equal(found[1]["weights"], torch.full((256,), 15.0))
    assert torch.load(ckpts.path_for(15), weights_only=True)["step"] == 15  # plain torch.load
    assert not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize("damage", ["truncate", "flip", "flip-directory", "empty", "foreign"])
def test_damaged_newer_file_is_skipped_never_loaded(tmp_path: Path, damage: str) -> None:
    ckpts = CheckpointDir(tmp_path, keep=5)
    ckpts.save(1, _state(1))
    ckpts.save(2, _state(2))
    bad = ckpts.path_for(2)
    data = bad.read_bytes()
    if damage == "truncate":
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        middle = len(data) // 2
        bad.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:])
    elif damage == "flip-directory":
        at = len(data) - 40  # inside the zip's end records, just before our trailer
        bad.write_bytes(data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:])
    elif damage == "empty":
        bad.write_bytes(b"")
    else:
        torch.save(_state(2), bad)  # a plain torch.save file has no trailer
    with pytest.raises(CorruptCheckpointError):
        read_verified(bad)
    found = ckpts.load_latest()
    assert found is not None and found[0].step == 1 and found[1]["step"] == 1


def test_payload_crc_mode_when_torch_skips_record_crcs(tmp_path: Path) -> None:
    from torch.utils.serialization import config

    # torch's own patch, not monkeypatch: undoing a monkeypatch on a config module deletes
    # the option, and every later torch.save in the process fails.
    path = tmp_path / "ckpt-000000000001.pt"
    with config.patch({"save.compute_crc32": False}):
        write_atomic(path, _state(1))
    assert read_verified(path)["step"] == 1
    data = path.read_bytes()
    path.write_bytes(data[:100] + bytes([data[100] ^ 0x10]) + data[101:])
    with pytest.raises(CorruptCheckpointError, match="CRC32 of payload"):
        verify(path)


def test_stale_temporaries_are_removed(tmp_path: Path) -> None:
    (tmp_path / ".tmp-ckpt-ckpt-000000000003.pt.123").write_bytes(b"partial")
    ckpts = CheckpointDir(tmp_path)
    ckpts.remove_stale_temporaries()
    assert list(tmp_path.iterdir()) == [] and ckpts.load_latest() is None


_CHILD = textwrap.dedent("""
    import os, sys, threading, torch
    from launcher.training import checkpoint
    ckpts = checkpoint.CheckpointDir(sys.argv[1])
    ckpts.save(1, {"step": 1, "w": torch.ones(1000)})
    stage = sys.argv[2]
    def block():
        print("blocked", flush=True)
        threading.Event().wait()
    if stage == "fsync":          # every byte written, not yet renamed
        os.fsync = lambda fd: block()
    else:                         # in the middle of writing the payload
        write = checkpoint._DurableWriter.write
        def slow(self, data):
            if self.size > 0:
                block()
            return write(self, data)
        checkpoint._DurableWriter.write = slow
    ckpts.save(2, {"step": 2, "w": torch.zeros(1_000_000)})
""")


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["write", "fsync"])
def test_sigkill_during_save_leaves_previous_checkpoint(tmp_path: Path, stage: str) -> None:
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path), stage],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
                             start_new_session=True)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()  # blocks until the child is inside the save
        assert line == b"blocked\n", child.stderr.read() if child.stderr else b""
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(timeout=60)
    ckpts = CheckpointDir(tmp_path)
    assert [c.step for c in ckpts.files()] == [1]
    assert len(list(tmp_path.glob(".tmp-ckpt-*"))) == 1  # the half-written temporary
    verify(ckpts.path_for(1))
    found = ckpts.load_latest()
    assert found is not None and found[1]["step"] == 1
